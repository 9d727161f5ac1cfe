"""Few-shot generators behind one ``adapt`` API: the meta-learned VAE, the two baselines and the
support-replay reference. ``adapt(support)`` gives an :class:`Adapted` that samples and scores.

* ``meta``: the meta-parameters adapted with the inner loop they were trained with (SGD, or
  Meta-SGD's learned rates);
* ``scratch``: a freshly initialised VAE trained with Adam on the K images alone;
* ``pretrain``: one VAE trained with Adam on all meta-train images jointly, then fine-tuned with
  Adam on the K images;
* ``support_replay``: the K supports themselves, repeated (what a perfect copier scores).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from components.data.binarize import binarize
from components.lr_schedule import Schedule, lr_factor
from components.meta.adaptation import AdaptationRule, finetune
from components.meta.learner import MetaLearner
from components.models.vae import ConvVAE, Weights, VAEConfig, build_vae, iwae_nll, param_dict, sample

log = logging.getLogger(__name__)


MODES = ("prior", "support")  # how a VAE samples: z from its (class) prior, or from the supports' posteriors
REPLAY = "support_replay"


class Adapted(Protocol):
    """A generator adapted to one class."""

    def sample(self, n: int, mode: str, generator: torch.Generator, temperature: float) -> Tensor: ...

    def nll(self, x: Tensor, samples: int, generator: torch.Generator,
            proposal_scales: tuple[float, ...] = (1.0,)) -> float | None:
        """Mean -log p(x) in nats per image (IWAE with ``samples`` from the posterior widened by
        ``proposal_scales``), or None for a generator without a density."""


class FewShotGenerator(Protocol):
    """Adapts to K images of a class (``steps`` at ``lr``), then samples in each of its ``modes``
    at its sampling ``temperature``."""

    name: str
    steps: int
    modes: tuple[str, ...]

    @property
    def lr(self) -> float | None: ...

    @property
    def nll_lr(self) -> float | None:
        """The fine-tuning lr its likelihood is measured at (None: ``lr``, the sampling one)."""

    @property
    def starts_trained(self) -> bool:
        """Whether lr 0 leaves a trained generator (not a random initialisation)."""

    @property
    def temperature(self) -> float: ...

    def sampling_temperature(self, mode: str) -> float:
        """The temperature it samples ``mode`` at (a baseline's may differ by mode: each chosen in its mode)."""

    def adapt(self, support: Tensor, generator: torch.Generator) -> Adapted: ...

    def with_settings(self, lr: float | None, temperature: float) -> FewShotGenerator:
        """The same generator adapting at ``lr`` (where it has one to choose) and sampling at ``temperature``."""

    def with_nll_lr(self, lr: float | None) -> FewShotGenerator:
        """The same generator, its likelihood measured after fine-tuning at ``lr`` (None: at ``lr``)."""


@dataclass
class AdaptedVAE:
    model: ConvVAE
    params: Weights
    support: Tensor
    spatial_temperature: float | None = None  # the ladder's grids' noise scale in sampling (None: the temperature)

    def sample(self, n: int, mode: str, generator: torch.Generator, temperature: float) -> Tensor:
        return sample(self.model, self.params, n, generator, mode, self.support, temperature,
                      self.spatial_temperature)

    def nll(self, x: Tensor, samples: int, generator: torch.Generator,
            proposal_scales: tuple[float, ...] = (1.0,)) -> float | None:
        return float(iwae_nll(self.model, self.params, x, samples, generator, proposal_scales).mean())


@dataclass
class ReplayedSupport:
    support: Tensor

    def sample(self, n: int, mode: str, generator: torch.Generator, temperature: float) -> Tensor:
        k = len(self.support)
        return self.support.repeat((n + k - 1) // k, 1, 1, 1)[:n]

    def nll(self, x: Tensor, samples: int, generator: torch.Generator,
            proposal_scales: tuple[float, ...] = (1.0,)) -> float | None:
        return None


@dataclass
class SupportReplay:
    """The reference: the K supports replayed as the samples (copy rate 1 by construction)."""

    name: str = REPLAY
    steps: int = 0
    lr: float | None = None
    modes: tuple[str, ...] = ("replay",)
    temperature: float = 1.0  # unused: replay draws no noise
    starts_trained: bool = True
    nll_lr: float | None = None  # no density

    def sampling_temperature(self, mode: str) -> float:
        return self.temperature

    def adapt(self, support: Tensor, generator: torch.Generator) -> Adapted:
        return ReplayedSupport(support)

    def with_settings(self, lr: float | None, temperature: float) -> SupportReplay:
        return self

    def with_nll_lr(self, lr: float | None) -> SupportReplay:
        return self


@dataclass
class MetaGenerator:
    """The meta-learned VAE, adapted by the one adaptation rule it is registered with."""

    learner: MetaLearner
    rule: AdaptationRule
    name: str = "meta"
    modes: tuple[str, ...] = MODES
    nll_lr: float | None = None  # the fine-tuning lr its likelihood is measured at (None: the rule's)

    @property
    def model(self) -> ConvVAE:
        return self.learner.model

    @property
    def steps(self) -> int:
        return self.rule.steps

    @property
    def lr(self) -> float | None:
        """The Adam lr of the fine-tuning after the context steps (0: none), the one lr chosen on meta-val."""
        return self.rule.finetune_lr

    @property
    def temperature(self) -> float:
        return self.rule.temperature

    @property
    def starts_trained(self) -> bool:
        return True

    def sampling_temperature(self, mode: str) -> float:
        return self.rule.temperature

    def with_settings(self, lr: float | None, temperature: float) -> MetaGenerator:
        """The fine-tuning lr (``None``: unchanged) and the temperature; the inner loop it was
        meta-trained with stays as it is."""
        return replace(self, rule=replace(self.rule, temperature=temperature,
                                          finetune_lr=self.rule.finetune_lr if lr is None else lr))

    def with_nll_lr(self, lr: float | None) -> MetaGenerator:
        return replace(self, nll_lr=lr)

    def adapt(self, support: Tensor, generator: torch.Generator) -> AdaptedVAE:
        fast = self.rule.adapt(self.model, self.learner.params(), self.learner.inner_lrs(), support, generator)
        return AdaptedVAE(self.model, fast, support, self.rule.spatial_temperature)


@dataclass
class FinetuneGenerator:
    """A starting point (pretrained or fresh) fine-tuned with Adam on the support images."""

    name: str
    model: ConvVAE
    start: Weights | None  # None: a fresh initialisation per adaptation (the scratch baseline)
    steps: int
    lr: float | None = None
    modes: tuple[str, ...] = MODES
    temperature: float = 1.0
    nll_lr: float | None = None  # the fine-tuning lr its likelihood is measured at (None: ``lr``)
    spatial_temperature: float | None = None  # the ladder's grids' noise scale in sampling (None: the temperature)
    mode_temperatures: tuple[tuple[str, float], ...] = ()  # (mode, temperature) where a mode's differs

    @property
    def starts_trained(self) -> bool:
        return self.start is not None

    def sampling_temperature(self, mode: str) -> float:
        return dict(self.mode_temperatures).get(mode, self.temperature)

    def with_settings(self, lr: float | None, temperature: float) -> FinetuneGenerator:
        return replace(self, lr=lr, temperature=temperature, mode_temperatures=())

    def with_modes(self, temperatures: dict[str, float]) -> FinetuneGenerator:
        """The same adaptation sampling only the modes of ``temperatures``, each at its own: one
        adaptation serves every mode whose settings chose the same lr."""
        modes = tuple(m for m in MODES if m in temperatures)
        return replace(self, modes=modes, temperature=temperatures[modes[0]],
                       mode_temperatures=tuple((m, temperatures[m]) for m in modes))

    def with_nll_lr(self, lr: float | None) -> FinetuneGenerator:
        return replace(self, nll_lr=lr)

    def adapt(self, support: Tensor, generator: torch.Generator) -> AdaptedVAE:
        if self.start is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            start = param_dict(build_vae(self.model.cfg, seed))
        else:
            start = self.start
        return AdaptedVAE(self.model, finetune(self.model, start, support, self.steps, self.lr or 0.0, generator),
                          support, self.spatial_temperature)


def pretrain_vae(
    cfg: VAEConfig, images: np.ndarray, steps: int, batch_size: int, lr: float, seed: int, binary: bool = False,
    schedule: Schedule = "constant", grad_clip: float | None = None,
) -> tuple[ConvVAE, list[float]]:
    """The ``pretrain`` baseline: one VAE trained on all meta-train images (Adam, seeded;
    ``binary``: each batch a fresh binary draw, as the meta-model's tasks; ``schedule``: the
    rate over the steps, as the meta-model's; ``grad_clip``: the gradient's norm clipped to it, as
    the meta-model's outer step clips to ``meta.grad_clip``, which the pipeline passes; None: not clipped)."""
    model = build_vae(cfg, seed)
    data = torch.from_numpy(images)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(schedule, step, steps)
        idx = torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen)
        eps = torch.randn(len(idx), model.noise_dim, generator=gen)
        x = binarize(data[idx], gen) if binary else data[idx]
        loss = model(x, eps).mean() / model.num_pixels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(float(loss.detach()) * model.num_pixels)
    return model, losses
