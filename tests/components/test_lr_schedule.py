"""The learning-rate schedule: constant, or half a cosine from the configured rate to zero."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.lr_schedule import lr_factor
from components.meta.generators import pretrain_vae
from components.models.vae import VAEConfig


def test_cosine_falls_from_one_to_zero_and_constant_stays() -> None:
    assert [lr_factor("cosine", s, 100) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert lr_factor("cosine", 25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    factors = [lr_factor("cosine", s, 100) for s in range(101)]
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    assert {lr_factor("constant", s, 100) for s in range(101)} == {1.0}
    with pytest.raises(ValueError, match="train.lr_schedule must be constant or cosine, got 'linear'"):
        lr_factor("linear", 0, 10)  # type: ignore[arg-type]


def test_the_pretrain_baseline_follows_the_schedule() -> None:
    """The `pretrain` baseline gets the meta-model's schedule: cosine gives other weights than
    constant from the same seed, and the same as constant for a one-step run (factor 1 at step 0)."""
    cfg = VAEConfig(1, 28, 4, 8, "bernoulli", 4)
    images = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)

    def weights(schedule: str, steps: int) -> list[torch.Tensor]:
        model, _ = pretrain_vae(cfg, images, steps, 8, 1e-2, 0, schedule=schedule)  # type: ignore[arg-type]
        return [p.detach() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(weights("constant", 1), weights("cosine", 1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights("constant", 4), weights("cosine", 4), strict=True))
