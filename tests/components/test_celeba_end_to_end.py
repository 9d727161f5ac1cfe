"""Real faces, RGB, Gaussian likelihood: CelebA's layout through preparation, meta-training and
the few-shot evaluation, scored in the standard Inception network's space (the RGB default; skips
where ../shared/data is absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from components.data.prepare import prepare
from components.data.sources import materialize_source
from components.evaluation.evaluate import build_domain_features, evaluate
from components.meta.adaptation import AdaptationRule
from components.meta.trainer import load_learner, train_local
from tests.conftest import SHARED_CELEBA, make_params

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED_CELEBA.is_dir(), reason="no ../shared/data")]


def test_celeba_rgb_pipeline(tmp_path: Path) -> None:
    params = make_params(
        "data.source=celeba", f"data.path={SHARED_CELEBA}", "data.channels=3", "data.image_size=32",
        "data.min_images_per_class=15", "model.likelihood=gaussian", "model.binarize=false", "model.width=16",
        "meta.k_query=5", "meta.rotate_classes=false",
        "meta.meta_batch_size=2", "train.steps=4", "train.val_every=2", "train.val_tasks=2", "eval.repeats=1",
        "eval.samples_per_class=8", "eval.kid_subset_size=8", "eval.kid_subsets=2", "eval.augment_steps=5",
        "eval.feature_steps=20", "eval.adapt_steps=1", "eval.min_extractor_accuracy=0", "eval.nll_samples=4", "eval.nll_choice_samples=4",
        "eval.finetune_lrs=[0.0, 0.001]", "eval.lr_choice_classes=2",  # Inception: ~0.13 s an image here
    )
    materialize_source(params.data, tmp_path / "raw")
    manifest = prepare(tmp_path / "raw", tmp_path / "prepared", params.data)
    assert {k: len(v["classes"]) for k, v in manifest["splits"].items()} == {"train": 18, "val": 6, "test": 6}
    result = train_local(params, tmp_path / "prepared", tmp_path / "ckpt", progress=False)
    learner = load_learner(result.checkpoint).learner
    assert learner.model.cfg.channels == 3 and learner.model.cfg.likelihood == "gaussian"
    build_domain_features(params, tmp_path / "prepared", tmp_path / "features")
    out = evaluate(learner, AdaptationRule.from_params(params), params, tmp_path / "prepared", tmp_path / "reports",
                   tmp_path / "features", tmp_path / "cache", baselines=False)
    report = json.loads(out.report_path.read_text())
    assert report["extractor"]["name"] == "inception" and report["extractor"]["digest"].startswith("fid-inception-")
    rows = report["rows"]
    assert all(math.isfinite(r["fid_mean"]) for r in rows)
    with Image.open(tmp_path / "reports" / "grid_meta_support.png") as img:
        assert img.mode == "RGB"
