"""The `pretrain` baseline's optional gradient clipping (`pretrain_vae(grad_clip=...)`), as the
meta-model's outer step clips to `meta.grad_clip`: off by default, the weights of a clip no
gradient reaches are the unclipped ones, and a clip that bites changes them."""

from __future__ import annotations

import numpy as np
import torch

from components.meta.generators import pretrain_vae
from components.models.vae import VAEConfig


def _weights(grad_clip: float | None, steps: int = 4) -> list[torch.Tensor]:
    cfg = VAEConfig(1, 28, 4, 8, "bernoulli", 4)
    images = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    model, _ = pretrain_vae(cfg, images, steps, 8, 1e-2, 0, grad_clip=grad_clip)
    return [p.detach() for p in model.parameters()]


def test_a_clip_no_gradient_reaches_changes_nothing_and_one_that_bites_does() -> None:
    unclipped = _weights(None)
    assert all(torch.equal(a, b) for a, b in zip(unclipped, _weights(1e9), strict=True))
    bitten = _weights(1e-4)  # every step's norm scaled to 1e-4: Adam's running moments see other ratios
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(unclipped, bitten, strict=True))
