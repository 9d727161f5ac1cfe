from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.errors import MetagenError
from components.evaluation.extractors import (
    INCEPTION_FILE,
    DomainExtractor,
    DomainCNN,
    build_fid_inception,
    fit_domain_extractor,
    inception_weights_path,
    load_domain_extractor,
    load_inception_extractor,
    save_domain_extractor,
)


def test_domain_extractor_learns_and_hash_tracks_weights(tmp_path: Path, digits_prepared: Path) -> None:
    from components.data.prepare import load_split

    train = load_split(digits_prepared, "train")
    net, metrics = fit_domain_extractor(train.images, train.labels, steps=200, seed=0)
    assert metrics["heldout_accuracy"] > 0.8  # 6 digit classes, chance is 0.17
    save_domain_extractor(tmp_path / "d.pt", net, {"channels": 1, "num_classes": len(train.classes)})
    loaded = load_domain_extractor(tmp_path / "d.pt")
    feats = loaded.features(torch.from_numpy(train.images[:10]))
    assert feats.shape == (10, 128)
    assert loaded.digest == DomainExtractor(net).digest
    with torch.no_grad():
        next(loaded.net.parameters()).add_(1e-3)
    assert loaded.digest != DomainExtractor(net).digest
    other = DomainExtractor(DomainCNN(1, len(train.classes)))
    assert other.digest != DomainExtractor(net).digest


def test_missing_inception_weights_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetagenError, match=rf"{INCEPTION_FILE}.*{tmp_path}.*eval.inception_weights"):
        inception_weights_path(None)
    with pytest.raises(MetagenError, match=r"eval.inception_weights: file not found: .*nope.pth"):
        inception_weights_path(str(tmp_path / "nope.pth"))


def test_inception_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_fid_inception()
    path = tmp_path / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    ext = load_inception_extractor(str(path))
    imgs = torch.rand(3, 1, 28, 28)
    feats = ext.features(imgs)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    # the Inception Score is exp(E KL(p(y|x) || p(y))): 1 exactly when every image is the same, and
    # at most the number of images (p(y) spread over at most that many distinct predictions)
    same, _ = ext.inception_score(imgs[:1].repeat(3, 1, 1, 1), splits=1)
    assert same == pytest.approx(1.0, abs=1e-5)
    mean, _ = ext.inception_score(imgs, splits=1)
    assert 1.0 - 1e-6 <= mean <= 3.0 + 1e-6
    torch.save({"wrong": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(MetagenError, match="not pytorch-fid's FID Inception weights"):
        load_inception_extractor(str(tmp_path / "bad.pth"))
