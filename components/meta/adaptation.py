"""The one adaptation rule: how a meta-learned generator adapts to K images, and then samples.

Built once from params (:meth:`AdaptationRule.from_params`), stored with the checkpoint and the
registered model, and used by validation, evaluation, the registry's pyfunc and ``metagen
generate`` alike, so the model that passed the gate is the model that is served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from components.meta.algorithms import adapt, adapt_keys
from components.models.vae import ConvVAE, Params, sample, with_context
from components.params import Params as AllParams


@dataclass(frozen=True)
class AdaptationRule:
    steps: int
    inner_lr: float
    scope: str
    learned_lrs: bool  # Meta-SGD: adapt with the learned per-entry rates instead of ``inner_lr``
    sampling: str
    temperature: float

    @classmethod
    def from_params(cls, params: AllParams) -> AdaptationRule:
        meta, ev = params.meta, params.eval
        scope = "all" if meta.algorithm == "reptile" else meta.adapt_scope
        return cls(steps=ev.adapt_steps, inner_lr=ev.inner_lr or meta.inner_lr, scope=scope,
                   learned_lrs=meta.algorithm == "metasgd" and ev.inner_lr is None,
                   sampling=ev.sampling, temperature=ev.temperature)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptationRule:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def adapt(self, model: ConvVAE, params: Params, lrs: Params | None, support: Tensor,
              generator: torch.Generator) -> Params:
        """Adapt a copy of ``params`` (plus the set encoder's context) on ``support``; no graph kept."""
        lr: float | Params = lrs if (self.learned_lrs and lrs is not None) else self.inner_lr
        eps = torch.randn(max(self.steps, 1), support.shape[0], model.cfg.latent_dim, generator=generator)
        start = with_context(model, params, support)
        fast = adapt(model, start, support, self.steps, lr, eps.to(support), adapt_keys(model, self.scope))
        return {k: v.detach() for k, v in fast.items()}

    def generate(self, model: ConvVAE, params: Params, lrs: Params | None, support: Tensor, n: int,
                 generator: torch.Generator, sampling: str | None = None) -> Tensor:
        """Adapt on ``support``, then ``n`` samples: what the pyfunc serves and evaluation scores."""
        fast = self.adapt(model, params, lrs, support, generator)
        return sample(model, fast, n, generator, sampling or self.sampling, support, self.temperature)
