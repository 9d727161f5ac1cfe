"""MAML (second order), first-order MAML, Reptile and Meta-SGD on the VAE's negative ELBO.

Two implementations of the same meta-gradient:

* ``vectorized``: ``torch.func`` (``grad`` through the inner loop, ``vmap`` over the tasks of a
  meta-batch), after PyTorch's functorch MAML example;
* ``loop``: a plain per-task ``torch.autograd.grad`` loop (``create_graph`` for second order), the
  reference the tests compare against and the baseline of ``benchmarks/meta_step.py``.

Both return the mean over tasks of each task's outer loss and meta-gradient. For Reptile the
"gradient" is ``theta - theta'`` (the Reptile direction, fed to the outer optimizer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vmap

from components.meta.tasks import TaskBatch
from components.models.vae import ConvVAE, Params, per_pixel_loss
from components.params import MetaParams

Algorithm = Literal["maml", "fomaml", "reptile", "metasgd"]
LR = float | Mapping[str, Tensor]


def adapt_keys(model: ConvVAE, scope: str) -> tuple[str, ...]:
    """The parameters the inner loop changes: all, the decoder, or the decoder's input layer."""
    names = [n for n, _ in model.named_parameters()]
    if scope == "all":
        return tuple(names)
    if scope == "decoder":
        return tuple(n for n in names if n.startswith(("dec_in.", "decoder.")) or n == "log_sigma")
    if scope == "head":
        return tuple(n for n in names if n.startswith("dec_in."))
    raise ValueError(f"meta.adapt_scope must be all, decoder or head, got {scope!r}")


@dataclass(frozen=True)
class AlgoConfig:
    algorithm: Algorithm
    inner_steps: int
    inner_lr: float
    keys: tuple[str, ...]

    @classmethod
    def from_params(cls, meta: MetaParams, model: ConvVAE) -> AlgoConfig:
        # Reptile moves every weight toward the adapted ones: it adapts all of them.
        scope = "all" if meta.algorithm == "reptile" else meta.adapt_scope
        return cls(meta.algorithm, meta.inner_steps, meta.inner_lr, adapt_keys(model, scope))


def _lr(lr: LR, key: str) -> float | Tensor:
    return lr[key] if isinstance(lr, Mapping) else lr


def adapt(
    model: ConvVAE,
    params: Params,
    x: Tensor,
    steps: int,
    inner_lr: LR,
    eps: Tensor,
    keys: tuple[str, ...] | None = None,
) -> Params:
    """``steps`` SGD steps on the per-pixel negative ELBO of ``x``; differentiable (torch.func).

    ``eps`` is ``(steps, >= len(x), latent)``; ``inner_lr`` a float or per-parameter tensors
    (Meta-SGD). Only ``keys`` change (default: all).
    """
    keys = tuple(params) if keys is None else keys
    fast = dict(params)
    n = x.shape[0]
    for s in range(steps):
        frozen = {k: v for k, v in fast.items() if k not in keys}

        def loss_fn(sub: Params, s: int = s, frozen: Params = frozen) -> Tensor:
            return per_pixel_loss(model, {**frozen, **sub}, x, eps[s, :n])

        g = grad(loss_fn)({k: fast[k] for k in keys})
        for k in keys:
            fast[k] = fast[k] - _lr(inner_lr, k) * g[k]
    return fast


# --- vectorized (torch.func) -------------------------------------------------------------------
def _task_fns(model: ConvVAE, cfg: AlgoConfig):  # noqa: ANN202
    k_steps = cfg.inner_steps

    def outer_loss(meta: Params, lrs: LR, support: Tensor, query: Tensor, eps_in: Tensor, eps_q: Tensor) -> Tensor:
        adapted = adapt(model, meta, support, k_steps, lrs, eps_in, cfg.keys)
        return per_pixel_loss(model, adapted, query, eps_q)

    def maml(meta, lrs, support, query, eps_in, eps_q):  # noqa: ANN001, ANN202
        g, loss = grad_and_value(outer_loss)(meta, lrs, support, query, eps_in, eps_q)
        return loss, g

    def metasgd(meta, lrs, support, query, eps_in, eps_q):  # noqa: ANN001, ANN202
        (g, g_lr), loss = grad_and_value(outer_loss, argnums=(0, 1))(meta, lrs, support, query, eps_in, eps_q)
        return loss, {**g, **{f"lr::{k}": v for k, v in g_lr.items()}}

    def fomaml(meta, lrs, support, query, eps_in, eps_q):  # noqa: ANN001, ANN202
        adapted = adapt(model, meta, support, k_steps, lrs, eps_in, cfg.keys)
        adapted = {k: v.detach() for k, v in adapted.items()}
        g, loss = grad_and_value(lambda p: per_pixel_loss(model, p, query, eps_q))(adapted)
        return loss, g

    def reptile(meta, lrs, support, query, eps_in, eps_q):  # noqa: ANN001, ANN202
        data = torch.cat([support, query])
        adapted = adapt(model, meta, data, k_steps, lrs, eps_in, cfg.keys)
        loss = per_pixel_loss(model, adapted, query, eps_q)
        return loss, {k: meta[k] - adapted[k] for k in meta}

    return {"maml": maml, "metasgd": metasgd, "fomaml": fomaml, "reptile": reptile}[cfg.algorithm]


def meta_gradients_vectorized(
    model: ConvVAE, meta: Params, lrs: Params | None, batch: TaskBatch, cfg: AlgoConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    fn = _task_fns(model, cfg)
    lr: LR = lrs if lrs is not None else cfg.inner_lr
    losses, grads = vmap(fn, in_dims=(None, None, 0, 0, 0, 0))(
        meta, lr, batch.support, batch.query, batch.eps_inner, batch.eps_query
    )
    return losses.mean(), {k: v.mean(0) for k, v in grads.items()}


# --- plain loop (reference) --------------------------------------------------------------------
def _adapt_autograd(
    model: ConvVAE, fast: Params, x: Tensor, eps: Tensor, cfg: AlgoConfig, lrs: LR, create_graph: bool
) -> Params:
    fast = dict(fast)
    for s in range(cfg.inner_steps):
        loss = per_pixel_loss(model, fast, x, eps[s, : x.shape[0]])
        gs = torch.autograd.grad(loss, [fast[k] for k in cfg.keys], create_graph=create_graph)
        for k, g in zip(cfg.keys, gs, strict=True):
            fast[k] = fast[k] - _lr(lrs, k) * g
    return fast


def meta_gradients_loop(
    model: ConvVAE, meta: Params, lrs: Params | None, batch: TaskBatch, cfg: AlgoConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    total: dict[str, Tensor] = {}
    losses = []
    for t in range(len(batch)):
        leaves = {k: v.detach().requires_grad_(True) for k, v in meta.items()}
        lr_leaves = {k: v.detach().requires_grad_(True) for k, v in lrs.items()} if lrs is not None else None
        lr: LR = lr_leaves if lr_leaves is not None else cfg.inner_lr
        support, query = batch.support[t], batch.query[t]
        eps_in, eps_q = batch.eps_inner[t], batch.eps_query[t]
        if cfg.algorithm in ("maml", "metasgd"):
            fast = _adapt_autograd(model, leaves, support, eps_in, cfg, lr, create_graph=True)
            loss = per_pixel_loss(model, fast, query, eps_q)
            wrt = list(leaves.items()) + ([(f"lr::{k}", v) for k, v in lr_leaves.items()] if lr_leaves else [])
            gs = torch.autograd.grad(loss, [v for _, v in wrt], allow_unused=True)
            task = {k: (g if g is not None else torch.zeros_like(v)) for (k, v), g in zip(wrt, gs, strict=True)}
        elif cfg.algorithm == "fomaml":
            fast = _adapt_autograd(model, leaves, support, eps_in, cfg, lr, create_graph=False)
            fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
            loss = per_pixel_loss(model, fast, query, eps_q)
            task = dict(zip(fast, torch.autograd.grad(loss, list(fast.values())), strict=True))
        else:  # reptile
            data = torch.cat([support, query])
            fast = _adapt_autograd(model, leaves, data, eps_in, cfg, lr, create_graph=False)
            with torch.no_grad():
                loss = per_pixel_loss(model, fast, query, eps_q)
                task = {k: leaves[k] - fast[k] for k in leaves}
        losses.append(loss.detach())
        for k, g in task.items():
            total[k] = total.get(k, 0) + g.detach()
    n = len(batch)
    return torch.stack(losses).mean(), {k: v / n for k, v in total.items()}


def meta_gradients(
    model: ConvVAE, meta: Params, lrs: Params | None, batch: TaskBatch, cfg: AlgoConfig, vectorize: bool = True
) -> tuple[Tensor, dict[str, Tensor]]:
    if cfg.algorithm == "metasgd" and lrs is None:
        raise ValueError("Meta-SGD needs per-parameter learning rates")
    fn = meta_gradients_vectorized if vectorize else meta_gradients_loop
    return fn(model, meta, lrs, batch, cfg)
