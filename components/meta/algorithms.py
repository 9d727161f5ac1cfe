"""MAML (second order), first-order MAML, Reptile and Meta-SGD on the VAE's negative ELBO.

A task's adaptation starts from the meta-parameters plus, for a set-conditioned VAE, the class
context the set encoder reads from the task's supports (:func:`with_context`); the inner loop then
takes SGD steps on the keys of ``meta.adapt_scope`` (the context alone is CAVIA). First-order MAML
uses the inner loop's displacement as a constant (``start + stopgrad(adapted - start)``), so the
gradient still reaches the set encoder through the starting context.

Two implementations of the same meta-gradient:

* ``batched``: when the inner loop adapts the context alone (CAVIA, the default), every task shares
  the network's weights, so the tasks of a meta-batch run as one batch: one forward over all tasks'
  images with a context per image, one ``autograd.grad`` for all contexts (each task's loss depends
  on its own context only), one backward to the weights. MAML (second order), first-order MAML and
  Meta-SGD; exact, not an approximation;
* ``vmap``: ``torch.func`` (``grad`` through the inner loop, ``vmap`` over the tasks of a
  meta-batch), after PyTorch's functorch MAML example: any scope.

The plain per-task ``torch.autograd.grad`` loop (learn2learn's and higher's recipe) is the
reference both are tested against (``tests/components/meta/reference_loop.py``) and the baseline of
``benchmarks/meta_step.py``; it is not a training path.

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
from components.models.vae import (CONTEXT, MEMORY, ConvVAE, Weights, neg_elbo, per_pixel_loss, set_context, trunk,
                                   with_context)

Algorithm = Literal["maml", "fomaml", "reptile", "metasgd"]
Impl = Literal["batched", "vmap"]
LR = float | Mapping[str, Tensor]


SCOPES = ("all", "decoder", "head", "film", "context")


def adapt_keys(model: ConvVAE, scope: str) -> tuple[str, ...]:
    """The entries the inner loop changes: all weights, the decoder, the decoder's input layer,
    the FiLM layer, or (set-conditioned VAE) the class context alone. A set-conditioned VAE always
    adapts its context too."""
    # the set encoder only makes the starting context: adapting it after that changes nothing
    names = [n for n, _ in model.named_parameters() if not n.startswith(model.SET_ENCODER)]
    ctx = (CONTEXT,) if model.conditional else ()
    if scope in ("film", "context") and not model.conditional:
        raise ValueError(f"meta.adapt_scope {scope!r} needs a set-conditioned VAE (model.context_dim > 0)")
    if scope == "film" and not model.FILM:
        raise ValueError("meta.adapt_scope 'film' needs model.arch conv (the ladder has no FiLM layer)")
    if scope == "all":
        return ctx + tuple(names)
    if scope == "decoder":
        return ctx + tuple(n for n in names if n.startswith(model.DECODER) or n == "log_sigma")
    if scope == "head":
        return ctx + tuple(n for n in names if n.startswith(model.HEAD))
    if scope == "film":
        return ctx + tuple(n for n in names if n.startswith(model.FILM))
    if scope == "context":
        return ctx
    raise ValueError(f"meta.adapt_scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def key_shape(model: ConvVAE, key: str) -> torch.Size:
    """Shape of an adaptable entry (a weight, or the context): Meta-SGD's learned rates match it."""
    if key == CONTEXT:
        return torch.Size([model.context_size])
    return dict(model.named_parameters())[key].shape


@dataclass(frozen=True)
class AlgoConfig:
    algorithm: Algorithm
    inner_steps: int
    inner_lr: float
    keys: tuple[str, ...]


def lr_of(lr: LR, key: str) -> float | Tensor:
    return lr[key] if isinstance(lr, Mapping) else lr


def adapt(
    model: ConvVAE,
    params: Weights,
    x: Tensor,
    steps: int,
    inner_lr: LR,
    eps: Tensor,
    keys: tuple[str, ...] | None = None,
) -> Weights:
    """``steps`` SGD steps on the per-pixel negative ELBO of ``x``; differentiable (torch.func).

    ``eps`` is ``(steps, >= len(x), latent)``; ``inner_lr`` a float or per-parameter tensors
    (Meta-SGD). Only ``keys`` change (default: all).
    """
    keys = tuple(params) if keys is None else keys
    fast = dict(params)
    n = x.shape[0]
    for s in range(steps):
        frozen = {k: v for k, v in fast.items() if k not in keys}

        def loss_fn(sub: Weights, s: int = s, frozen: Weights = frozen) -> Tensor:
            return per_pixel_loss(model, {**frozen, **sub}, x, eps[s, :n])

        g = grad(loss_fn)({k: fast[k] for k in keys})
        for k in keys:
            fast[k] = fast[k] - lr_of(inner_lr, k) * g[k]
    return fast


def context_pull(model: ConvVAE, meta: Weights, support: Tensor, target: Tensor, keep: Tensor | float = 1.0) -> Tensor:
    """Reptile for the set encoder: half the squared distance from its context to the adapted one
    (its gradient is the Reptile direction ``c0 - c_adapted`` carried back to the set encoder)."""
    start = with_context(model, meta, support, keep)[CONTEXT]
    return 0.5 * (start - target).pow(2).sum()


# --- vectorized (torch.func) -------------------------------------------------------------------
def _task_fns(model: ConvVAE, cfg: AlgoConfig):  # noqa: ANN202
    k_steps = cfg.inner_steps

    def outer_loss(meta: Weights, lrs: LR, support: Tensor, query: Tensor, eps_in: Tensor, eps_q: Tensor,
                   keep: Tensor) -> Tensor:
        adapted = adapt(model, with_context(model, meta, support, keep), support, k_steps, lrs, eps_in, cfg.keys)
        return per_pixel_loss(model, adapted, query, eps_q)

    def maml(meta, lrs, support, query, eps_in, eps_q, keep):  # noqa: ANN001, ANN202
        g, loss = grad_and_value(outer_loss)(meta, lrs, support, query, eps_in, eps_q, keep)
        return loss, g

    def metasgd(meta, lrs, support, query, eps_in, eps_q, keep):  # noqa: ANN001, ANN202
        (g, g_lr), loss = grad_and_value(outer_loss, argnums=(0, 1))(meta, lrs, support, query, eps_in, eps_q, keep)
        return loss, {**g, **{f"lr::{k}": v for k, v in g_lr.items()}}

    def fomaml_loss(meta: Weights, lrs: LR, support: Tensor, query: Tensor, eps_in: Tensor, eps_q: Tensor,
                    keep: Tensor) -> Tensor:
        start = with_context(model, meta, support, keep)
        adapted = adapt(model, {k: v.detach() for k, v in start.items()}, support, k_steps, lrs, eps_in, cfg.keys)
        moved = {k: start[k] + (adapted[k] - start[k]).detach() for k in start}
        return per_pixel_loss(model, moved, query, eps_q)

    def fomaml(meta, lrs, support, query, eps_in, eps_q, keep):  # noqa: ANN001, ANN202
        g, loss = grad_and_value(fomaml_loss)(meta, lrs, support, query, eps_in, eps_q, keep)
        return loss, g

    def reptile(meta, lrs, support, query, eps_in, eps_q, keep):  # noqa: ANN001, ANN202
        data = torch.cat([support, query])
        adapted = adapt(model, with_context(model, meta, support, keep), data, k_steps, lrs, eps_in, cfg.keys)
        loss = per_pixel_loss(model, adapted, query, eps_q)
        direction = {k: meta[k] - adapted[k] for k in meta}
        if model.conditional:
            set_part = {k: v for k, v in meta.items() if k.startswith(model.SET_ENCODER)}
            rest = {k: v.detach() for k, v in meta.items() if not k.startswith(model.SET_ENCODER)}
            direction.update(grad(lambda p: context_pull(model, {**rest, **p}, support, adapted[CONTEXT].detach(),
                                                          keep))(set_part))
        return loss, direction

    return {"maml": maml, "metasgd": metasgd, "fomaml": fomaml, "reptile": reptile}[cfg.algorithm]


def meta_gradients_vectorized(
    model: ConvVAE, meta: Weights, lrs: Weights | None, batch: TaskBatch, cfg: AlgoConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    fn = _task_fns(model, cfg)
    lr: LR = lrs if lrs is not None else cfg.inner_lr
    losses, grads = vmap(fn, in_dims=(None, None, 0, 0, 0, 0, 0))(
        meta, lr, batch.support, batch.query, batch.eps_inner, batch.eps_query, batch.keep().to(batch.support)
    )
    return losses.mean(), {k: v.mean(0) for k, v in grads.items()}


# --- batched (context adaptation: the tasks share every weight) ---------------------------------
def batchable(model: ConvVAE, cfg: AlgoConfig) -> bool:
    """The batched path applies: the inner loop adapts the context alone, by gradient steps."""
    return model.conditional and cfg.keys == (CONTEXT,) and cfg.algorithm in ("maml", "fomaml", "metasgd")


def _task_losses(model: ConvVAE, weights: Weights, contexts: Tensor, x: Tensor, features: Tensor, eps: Tensor,
                 memory: Tensor | None = None) -> Tensor:
    """Per-task per-pixel negative ELBO ``(B,)`` of ``x`` ``(B, n, C, H, W)`` (trunk ``features``
    ``(B*n, F)``), task b under ``contexts[b]`` (and ``memory[b]``, if the decoder attends: one
    memory per task, the task's n images a contiguous group of rows)."""
    b, n = x.shape[:2]
    task = {CONTEXT: contexts.repeat_interleave(n, dim=0)}
    if memory is not None:
        task[MEMORY] = memory
    nll = neg_elbo(model, {**weights, **task}, x.reshape(b * n, *x.shape[2:]), eps.reshape(b * n, -1), features)
    return nll.view(b, n).mean(1) / model.num_pixels


def meta_gradients_batched(
    model: ConvVAE, meta: Weights, lrs: Weights | None, batch: TaskBatch, cfg: AlgoConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    if not batchable(model, cfg):
        raise ValueError("the batched meta-step needs a set-conditioned VAE adapting its context alone "
                         f"(maml, fomaml or metasgd); got {cfg.algorithm} on {cfg.keys}")
    leaves = {k: v.detach().requires_grad_(True) for k, v in meta.items()}
    lr_leaf = lrs[CONTEXT].detach().requires_grad_(True) if lrs is not None else None
    lr: float | Tensor = lr_leaf if lr_leaf is not None else cfg.inner_lr
    second_order = cfg.algorithm in ("maml", "metasgd")
    b, k = batch.support.shape[:2]
    # the trunk does not see the context: its features of the supports serve the set encoder and
    # every inner step (the per-task loop recomputes them each time)
    feats = trunk(model, leaves, batch.support.reshape(b * k, *batch.support.shape[2:]))
    keep = batch.keep().to(feats)
    start = set_context(model, leaves, batch.support, feats) * keep[:, None]  # (B, d)
    memory = model.support_memory(feats, (b,)) * keep[:, None, None] if model.attends else None  # (B, K*P, c)
    ctx = start if second_order else start.detach().requires_grad_(True)
    inner_feats = feats if second_order else feats.detach()
    inner_memory = memory if (second_order or memory is None) else memory.detach()
    for s in range(cfg.inner_steps):
        # the sum of the tasks' losses: its gradient in task b's context is task b's own gradient
        inner = _task_losses(model, leaves, ctx, batch.support, inner_feats, batch.eps_inner[:, s, :k],
                             inner_memory).sum()
        (g,) = torch.autograd.grad(inner, [ctx], create_graph=second_order)
        ctx = ctx - lr * g
    if not second_order:
        ctx = start + (ctx - start).detach()
    query_feats = trunk(model, leaves, batch.query.reshape(-1, *batch.query.shape[2:]))
    losses = _task_losses(model, leaves, ctx, batch.query, query_feats, batch.eps_query, memory)
    loss = losses.mean()
    wrt = list(leaves.items()) + ([(f"lr::{CONTEXT}", lr_leaf)] if lr_leaf is not None else [])
    gs = torch.autograd.grad(loss, [v for _, v in wrt], allow_unused=True)
    grads = {name: (g if g is not None else torch.zeros_like(v)) for (name, v), g in zip(wrt, gs, strict=True)}
    return loss.detach(), grads


IMPLEMENTATIONS = {"batched": meta_gradients_batched, "vmap": meta_gradients_vectorized}


def default_impl(model: ConvVAE, cfg: AlgoConfig) -> Impl:
    """Batched when it applies (measured fastest: benchmarks/meta_step.py), else vmap."""
    return "batched" if batchable(model, cfg) else "vmap"


def meta_gradients(
    model: ConvVAE, meta: Weights, lrs: Weights | None, batch: TaskBatch, cfg: AlgoConfig, impl: Impl | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean outer loss and meta-gradient; ``impl`` picks the implementation (default:
    :func:`default_impl`)."""
    if cfg.algorithm == "metasgd" and lrs is None:
        raise ValueError("Meta-SGD needs per-parameter learning rates")
    return IMPLEMENTATIONS[impl or default_impl(model, cfg)](model, meta, lrs, batch, cfg)
