from __future__ import annotations

from pathlib import Path

import torch

from components.evaluation.extractors import (
    DomainCNN,
    DomainExtractor,
    fit_domain_extractor,
    load_domain_extractor,
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
