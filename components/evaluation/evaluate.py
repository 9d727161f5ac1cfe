"""Evaluate a meta-trained checkpoint against both baselines and the support-replay reference."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.atomic import atomic_file, write_text_atomic
from components.data.prepare import Split, load_split, read_manifest
from components.evaluation import extractors as ex
from components.evaluation.pictures import fid_bar_chart, loss_curve, sample_grid, save_grid
from components.evaluation.protocol import MODES, Protocol, choose_lr, draw_episode, evaluate_generator
from components.evaluation.report import markdown_table
from components.meta.baselines import FinetuneGenerator, MetaGenerator, pretrain_vae
from components.meta.learner import MetaLearner
from components.models.vae import ConvVAE, VAEConfig, param_dict
from components.params import Params

log = logging.getLogger(__name__)
DOMAIN_FILE = "domain.pt"
DOMAIN_METRICS = "metrics.json"


def build_domain_features(params: Params, prepared_dir: Path, features_dir: Path) -> dict[str, Any]:
    """The dvc.yaml ``features`` stage: train the domain CNN on meta-train classes, write it + metrics."""
    train = load_split(prepared_dir, "train")
    net, metrics = ex.fit_domain_extractor(train.images, train.labels, params.eval.feature_steps, params.train.seed)
    meta = {"channels": int(train.images.shape[1]), "num_classes": len(train.classes), "classes": train.classes}
    ex.save_domain_extractor(features_dir / DOMAIN_FILE, net, meta)
    metrics["digest"] = ex.DomainExtractor(net).digest
    ex.write_metrics(features_dir / DOMAIN_METRICS, metrics)
    log.info("domain extractor: held-out accuracy %.3f on meta-train classes", metrics["heldout_accuracy"])
    return metrics


def load_extractor(params: Params, prepared_dir: Path, features_dir: Path) -> ex.FeatureExtractor:
    if params.eval.extractor == "inception":
        return ex.load_inception_extractor(params.eval.inception_weights)
    path = features_dir / DOMAIN_FILE
    if not path.is_file():
        log.info("no domain extractor at %s: training it now (the dvc.yaml `features` stage)", path)
        build_domain_features(params, prepared_dir, features_dir)
    return ex.load_domain_extractor(path)


def pretrained_baseline(params: Params, cfg: VAEConfig, train: Split, cache_dir: Path, data_key: str) -> ConvVAE:
    """The ``pretrain`` baseline's joint VAE, cached on (data, model, pretrain params)."""
    key = hashlib.sha256(json.dumps({
        "data": data_key, "vae": cfg.__dict__, "steps": params.train.pretrain_steps,
        "batch": params.train.pretrain_batch_size, "lr": params.eval.pretrain_lr, "seed": params.train.seed,
    }, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"pretrain-{key}.pt"
    model = ConvVAE(cfg)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model
    log.info("training the pretrain baseline (%d Adam steps on all meta-train images)", params.train.pretrain_steps)
    model, _ = pretrain_vae(cfg, train.images, params.train.pretrain_steps, params.train.pretrain_batch_size,
                            params.eval.pretrain_lr, params.train.seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return model


@dataclass
class EvalOutputs:
    report: dict[str, Any]
    report_path: Path
    markdown_path: Path
    pictures: list[Path]


def evaluate(
    learner: MetaLearner,
    params: Params,
    prepared_dir: Path,
    out_dir: Path,
    features_dir: Path,
    cache_dir: Path,
    history: list[dict[str, float]] | None = None,
    step: Callable[[str], None] | None = None,
    baselines: bool = True,
) -> EvalOutputs:
    """The meta-model vs ``pretrain`` vs ``scratch`` vs support replay, each sampling mode."""
    notify = step or (lambda _msg: None)
    cfg = learner.model.cfg
    train, val, test = (load_split(prepared_dir, s) for s in ("train", "val", "test"))
    manifest = read_manifest(prepared_dir)
    protocol = Protocol(params.eval, params.meta.k_shot, manifest["splits"]["test"]["sha256"])
    extractor = load_extractor(params, prepared_dir, features_dir)
    notify("features of real images")
    test_feats = extractor.features(torch.from_numpy(test.images))
    val_feats = extractor.features(torch.from_numpy(val.images))
    rows: list[dict[str, Any]] = []
    samples: dict[str, dict[str, list[torch.Tensor]]] = {}
    lr_choices: dict[str, dict[str, float]] = {}

    stats = cache_dir / "fid-stats"
    meta = MetaGenerator(learner)
    notify("meta-model")
    meta_rows, samples["meta"] = evaluate_generator(
        meta, test, test_feats, extractor, protocol, params.eval.adapt_steps, params.eval.inner_lr, stats_cache=stats)
    rows += meta_rows
    if baselines:
        data_key = manifest["splits"]["train"]["sha256"]
        pre_model = pretrained_baseline(params, cfg, train, cache_dir, data_key)
        gens = [
            (FinetuneGenerator("pretrain", pre_model, param_dict(pre_model)), params.eval.baseline_steps),
            (FinetuneGenerator("scratch", ConvVAE(cfg), None), params.eval.scratch_steps),
        ]
        for gen, steps in gens:
            notify(f"{gen.name}: choosing its adaptation lr on meta-val")
            lr, scores = choose_lr(gen, val, val_feats, extractor, protocol, steps, params.eval.baseline_lrs, "support")
            lr_choices[gen.name] = {"chosen": lr, **{f"fid@{k:g}": v for k, v in scores.items()}}
            notify(gen.name)
            g_rows, samples[gen.name] = evaluate_generator(gen, test, test_feats, extractor, protocol, steps, lr,
                                                           stats_cache=stats)
            rows += g_rows
    notify("support replay")
    replay_rows, _ = evaluate_generator(None, test, test_feats, extractor, protocol, 0, None, stats_cache=stats)
    rows += replay_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = _pictures(out_dir, test, protocol, samples, rows, history)
    report = {
        "protocol": {"digest": protocol.digest, **params.eval.model_dump(mode="json"), "k_shot": params.meta.k_shot,
                     "test_classes": test.classes},
        "extractor": {"name": extractor.name, "digest": extractor.digest},
        "rows": rows,
        "baseline_lr_selection": lr_choices,
        "best": {mode: min((r for r in rows if r["sampling"] == mode), key=lambda r: r["fid_mean"])["model"]
                 for mode in MODES},
    }
    if isinstance(extractor, ex.InceptionExtractor):
        report["inception_score"] = {
            name: dict(zip(("mean", "std"), extractor.inception_score(torch.cat(s["support"]))))
            for name, s in samples.items()
        }
    report_path = out_dir / "eval.json"
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
    md_path = out_dir / "eval.md"
    write_text_atomic(md_path, markdown_table(report))
    return EvalOutputs(report, report_path, md_path, pictures)


def _pictures(out_dir: Path, test: Split, protocol: Protocol, samples: dict, rows: list, history: list | None) -> list[Path]:
    episode = draw_episode(test, protocol.k_shot, protocol.eval.seed)  # the first repeat's supports
    shown = list(range(min(4, len(test.classes))))
    supports = [torch.from_numpy(test.images[episode.supports[c]]) for c in shown]
    paths = []
    for name, by_mode in samples.items():
        for mode, per_class in by_mode.items():
            grid = sample_grid(supports, [per_class[c] for c in shown], per_row=10)
            paths.append(save_grid(out_dir / f"grid_{name}_{mode}.png", grid))
    paths.append(fid_bar_chart(out_dir / "fid.png", rows))
    if history:
        curve = loss_curve(out_dir / "loss.png", history)
        if curve is not None:
            paths.append(curve)
    return paths


def meta_fid(report: dict[str, Any], sampling: str) -> float:
    """The gated number: the meta-model's pooled few-shot FID in the configured sampling mode."""
    return next(r["fid_mean"] for r in report["rows"] if r["model"] == "meta" and r["sampling"] == sampling)


def score_registered(uri: str, params: Params, root: Path) -> float:
    """Re-evaluate a registered version on the current protocol (meta-model only)."""
    import tempfile

    from components.registry import load_registered_learner

    restored = load_registered_learner(uri)
    with tempfile.TemporaryDirectory(prefix="metagen-reeval-") as tmp:
        out = evaluate(restored.learner, params, root / params.data.prepared_dir, Path(tmp),
                       root / params.eval.features_dir, root / params.train.checkpoint_dir, baselines=False)
    return meta_fid(out.report, params.eval.sampling)
