"""Few-shot generators behind one ``adapt`` API: the meta-learned VAE and the two baselines.

* ``meta``: the meta-parameters adapted with the inner loop they were trained with (SGD, or
  Meta-SGD's learned rates);
* ``scratch``: a freshly initialised VAE trained with Adam on the K images alone;
* ``pretrain``: one VAE trained with Adam on all meta-train images jointly, then fine-tuned with
  Adam on the K images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from components.meta.adaptation import AdaptationRule
from components.meta.learner import MetaLearner
from components.models.vae import ConvVAE, Params, VAEConfig, build_vae, param_dict, per_pixel_loss

log = logging.getLogger(__name__)


class FewShotGenerator(Protocol):
    """Adapts to K images of a class; ``model`` + the returned parameters generate and score it."""

    name: str
    model: ConvVAE
    steps: int
    lr: float | None

    def adapt(self, support: Tensor, generator: torch.Generator) -> Params: ...


def finetune(
    model: ConvVAE, params: Params, support: Tensor, steps: int, lr: float, generator: torch.Generator
) -> Params:
    """Adam on the per-pixel negative ELBO of ``support``; ``lr == 0`` or ``steps == 0`` is a no-op."""
    if steps == 0 or lr == 0:
        return {k: v.detach().clone() for k, v in params.items()}
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(leaves.values(), lr=lr)
    for _ in range(steps):
        eps = torch.randn(support.shape[0], model.cfg.latent_dim, generator=generator, dtype=support.dtype)
        loss = per_pixel_loss(model, leaves, support, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in leaves.items()}


@dataclass
class MetaGenerator:
    """The meta-learned VAE, adapted by the one adaptation rule it is registered with."""

    learner: MetaLearner
    rule: AdaptationRule
    name: str = "meta"

    @property
    def model(self) -> ConvVAE:
        return self.learner.model

    @property
    def steps(self) -> int:
        return self.rule.steps

    @property
    def lr(self) -> float | None:
        return None if self.rule.learned_lrs else self.rule.inner_lr

    def adapt(self, support: Tensor, generator: torch.Generator) -> Params:
        return self.rule.adapt(self.model, self.learner.params(), self.learner.inner_lrs(), support, generator)


@dataclass
class FinetuneGenerator:
    """A starting point (pretrained or fresh) fine-tuned with Adam on the support images."""

    name: str
    model: ConvVAE
    start: Params | None  # None: a fresh initialisation per adaptation (the scratch baseline)
    steps: int
    lr: float | None = None

    def adapt(self, support: Tensor, generator: torch.Generator) -> Params:
        if self.start is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            start = param_dict(build_vae(self.model.cfg, seed))
        else:
            start = self.start
        return finetune(self.model, start, support, self.steps, self.lr or 0.0, generator)


def pretrain_vae(
    cfg: VAEConfig, images: np.ndarray, steps: int, batch_size: int, lr: float, seed: int
) -> tuple[ConvVAE, list[float]]:
    """The ``pretrain`` baseline: one VAE trained on all meta-train images (Adam, seeded)."""
    model = build_vae(cfg, seed)
    data = torch.from_numpy(images)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen)
        eps = torch.randn(len(idx), cfg.latent_dim, generator=gen)
        loss = model(data[idx], eps).mean() / model.num_pixels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(float(loss.detach()) * model.num_pixels)
    return model, losses
