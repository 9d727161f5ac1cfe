"""The one adaptation rule: how a meta-learned generator adapts to K images, and then samples.

Adapting is the inner loop the model was meta-trained with (gradient steps on the class context,
or on the weights of ``scope``, from the set encoder's context), optionally followed by the Adam
fine-tuning the ``pretrain`` baseline gets (``finetune_steps`` at ``finetune_lr``, every weight and
the context; the lr chosen on meta-val like the baselines'), so that the meta-learned model can
sharpen on the supports as much as a fine-tuned baseline may, under the same copy rule. A
set-conditioned model can fine-tune ``joint`` (each support's ELBO under the context of all K,
itself among them) or ``leave_one_out`` (each support's under the context of the other K - 1, as
meta-training scores a query under its supports' context; then the context of all K under the
tuned weights, before any context steps): ``eval.set_finetune``.

Built in one place: :meth:`AdaptationRule.for_training` is the inner loop meta-training runs (the
learner's algorithm and validation derive from it); :meth:`AdaptationRule.from_params` is that
rule with the evaluation's settings, stored with the checkpoint and the registered model, and used
by evaluation, the registry's pyfunc and ``metagen generate`` alike, so the model that passed the
gate is the model that is served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from components.meta.algorithms import adapt, adapt_keys
from components.models.vae import (CONTEXT, MEMORY, TASK_KEYS, ConvVAE, Weights, per_pixel_loss, sample, set_context,
                                   with_context)
from components.params import SET_FINETUNES, MetaParams, Params as AllParams


@dataclass(frozen=True)
class AdaptationRule:
    steps: int
    inner_lr: float
    scope: str
    learned_lrs: bool  # Meta-SGD: adapt with the learned per-entry rates instead of ``inner_lr``
    sampling: str
    temperature: float
    finetune_steps: int = 0
    finetune_lr: float = 0.0  # 0: no fine-tuning (a rule registered before this field has none)
    set_finetune: str = "joint"  # joint | leave_one_out (a rule registered before this field fine-tunes joint)
    spatial_temperature: float | None = None  # the ladder's grids' noise scale in sampling (None: ``temperature``)

    def __post_init__(self) -> None:
        if self.set_finetune not in SET_FINETUNES:
            raise ValueError(f"set_finetune must be one of {SET_FINETUNES}, got {self.set_finetune!r}")

    @classmethod
    def for_training(cls, meta: MetaParams) -> AdaptationRule:
        """The inner loop as meta-training runs it. Reptile moves every weight toward the adapted
        ones, so it adapts all of them; Meta-SGD adapts with its learned rates."""
        scope = "all" if meta.algorithm == "reptile" else meta.adapt_scope
        return cls(steps=meta.inner_steps, inner_lr=meta.inner_lr, scope=scope,
                   learned_lrs=meta.algorithm == "metasgd", sampling="prior", temperature=1.0)

    @classmethod
    def from_params(cls, params: AllParams) -> AdaptationRule:
        """The training rule with the evaluation's settings: ``eval.adapt_steps`` (and
        ``eval.inner_lr``, which replaces Meta-SGD's learned rates when set); its temperature is the
        first of ``eval.temperatures`` and it fine-tunes at lr 0 (not at all) until the evaluation
        chooses both on meta-val classes (the registered rule is the evaluated one)."""
        trained, ev = cls.for_training(params.meta), params.eval
        return replace(trained, steps=ev.adapt_steps, inner_lr=ev.inner_lr or trained.inner_lr,
                       learned_lrs=trained.learned_lrs and ev.inner_lr is None, sampling=ev.sampling,
                       temperature=ev.temperatures[0], finetune_steps=ev.finetune_steps,
                       set_finetune=ev.set_finetune, spatial_temperature=ev.spatial_temperature)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptationRule:
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def adapt(self, model: ConvVAE, params: Weights, lrs: Weights | None, support: Tensor,
              generator: torch.Generator) -> Weights:
        """Adapt a copy of ``params`` (plus the set encoder's context) on ``support``; no graph kept."""
        lr: float | Weights = lrs if (self.learned_lrs and lrs is not None) else self.inner_lr
        eps = torch.randn(max(self.steps, 1), support.shape[0], model.noise_dim, generator=generator)
        held_out = self.set_finetune == "leave_one_out" and model.conditional
        if held_out:  # the weights first, then the context of all K under them
            params = finetune_leave_one_out(model, params, support, self.finetune_steps, self.finetune_lr, generator)
        start = with_context(model, params, support)
        fast = adapt(model, start, support, self.steps, lr, eps.to(support), adapt_keys(model, self.scope))
        if held_out:
            return fast
        return finetune(model, fast, support, self.finetune_steps, self.finetune_lr, generator)

    def generate(self, model: ConvVAE, params: Weights, lrs: Weights | None, support: Tensor, n: int,
                 generator: torch.Generator, sampling: str | None = None) -> Tensor:
        """Adapt on ``support``, then ``n`` samples: what the pyfunc serves and evaluation scores."""
        fast = self.adapt(model, params, lrs, support, generator)
        return sample(model, fast, n, generator, sampling or self.sampling, support, self.temperature,
                      self.spatial_temperature)


def finetune(
    model: ConvVAE, params: Weights, support: Tensor, steps: int, lr: float, generator: torch.Generator,
    fused: bool = True,
) -> Weights:
    """Adam on the per-pixel negative ELBO of ``support`` over every entry of ``params`` (the
    context too, if any; not the supports' attention memory, which is data); ``lr == 0`` or
    ``steps == 0`` is a no-op. No graph kept. ``fused``: Adam's fused kernel, one call per step for
    every tensor (on a CPU torch's default loops over the tensors, ~10 ops each: 1.1x faster a step on
    5 images; `benchmarks/eval_kernels.py`); the same update up to float rounding."""
    if steps == 0 or lr == 0:
        return {k: v.detach().clone() for k, v in params.items()}
    leaves = {k: v.detach().clone().requires_grad_(k != MEMORY) for k, v in params.items()}
    opt = torch.optim.Adam([v for v in leaves.values() if v.requires_grad], lr=lr, fused=fused)
    with torch.enable_grad():  # also where the caller samples under no_grad (validation grids)
        for _ in range(steps):
            eps = torch.randn(support.shape[0], model.noise_dim, generator=generator, dtype=support.dtype)
            loss = per_pixel_loss(model, leaves, support, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {k: v.detach() for k, v in leaves.items()}


def leave_one_out_loss(model: ConvVAE, weights: Weights, support: Tensor, eps: Tensor) -> Tensor:
    """Mean per-pixel negative ELBO of each of the K supports under the set encoder's context of the
    other K - 1 (one batched pass: the K contexts at once); ``weights`` without a context."""
    k = support.shape[0]
    others = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, k)]) for i in range(k)])  # (K, K-1)
    context = set_context(model, weights, support[others])  # (K, d): support i's, read from the others
    return per_pixel_loss(model, {**weights, CONTEXT: context}, support, eps)


def finetune_leave_one_out(
    model: ConvVAE, params: Weights, support: Tensor, steps: int, lr: float, generator: torch.Generator,
    fused: bool = True,
) -> Weights:
    """Adam on :func:`leave_one_out_loss` (the set encoder, the trunk and the decoder all tuned; a
    support is never in its own context, as a query is not in meta-training), ``steps`` at ``lr``;
    0 of either is a no-op. Returns the network's weights without a context
    (:func:`~components.models.vae.with_context` adds the K supports')."""
    k = support.shape[0]
    if model.attends:
        raise ValueError("eval.set_finetune leave_one_out needs a model without model.support_attention")
    if k < 2:
        raise ValueError(f"eval.set_finetune leave_one_out needs at least 2 supports (meta.k_shot), got {k}")
    weights = {key: v.detach().clone() for key, v in params.items() if key not in TASK_KEYS}
    if steps == 0 or lr == 0:
        return weights
    leaves = {key: v.requires_grad_(True) for key, v in weights.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=lr, fused=fused)
    with torch.enable_grad():
        for _ in range(steps):
            eps = torch.randn(k, model.noise_dim, generator=generator, dtype=support.dtype)
            loss = leave_one_out_loss(model, leaves, support, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {key: v.detach() for key, v in leaves.items()}
