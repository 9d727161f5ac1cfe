"""The reference meta-gradient: a plain per-task ``torch.autograd.grad`` loop (``create_graph``
for second order), the recipe of learn2learn and higher. The batched and vmap implementations of
:mod:`components.meta.algorithms` are tested against it, and ``benchmarks/meta_step.py`` times it as
the loop a user would write instead. Not a training path."""

from __future__ import annotations

import torch
from torch import Tensor

from components.meta.algorithms import LR, AlgoConfig, context_pull, lr_of
from components.meta.tasks import TaskBatch
from components.models.vae import CONTEXT, ConvVAE, Weights, per_pixel_loss, with_context


def adapt_autograd(
    model: ConvVAE, fast: Weights, x: Tensor, eps: Tensor, cfg: AlgoConfig, lrs: LR, create_graph: bool
) -> Weights:
    fast = dict(fast)
    for s in range(cfg.inner_steps):
        # fresh graph nodes for the adapted entries: the inner gradient is the partial derivative
        # (the context, computed from the encoder's weights, is an input of its own, as in torch.func)
        inputs = {k: (v.view_as(v) if k in cfg.keys else v) for k, v in fast.items()}
        loss = per_pixel_loss(model, inputs, x, eps[s, : x.shape[0]])
        gs = torch.autograd.grad(loss, [inputs[k] for k in cfg.keys], create_graph=create_graph)
        for k, g in zip(cfg.keys, gs, strict=True):
            fast[k] = fast[k] - lr_of(lrs, k) * g
    return fast


def meta_gradients_loop(
    model: ConvVAE, meta: Weights, lrs: Weights | None, batch: TaskBatch, cfg: AlgoConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    total: dict[str, Tensor] = {}
    losses = []
    for t in range(len(batch)):
        leaves = {k: v.detach().requires_grad_(True) for k, v in meta.items()}
        lr_leaves = {k: v.detach().requires_grad_(True) for k, v in lrs.items()} if lrs is not None else None
        lr: LR = lr_leaves if lr_leaves is not None else cfg.inner_lr
        support, query = batch.support[t], batch.query[t]
        eps_in, eps_q = batch.eps_inner[t], batch.eps_query[t]
        keep = batch.keep().to(support)[t]
        start = with_context(model, leaves, support, keep)
        if cfg.algorithm in ("maml", "metasgd"):
            fast = adapt_autograd(model, start, support, eps_in, cfg, lr, create_graph=True)
            loss = per_pixel_loss(model, fast, query, eps_q)
            wrt = list(leaves.items()) + ([(f"lr::{k}", v) for k, v in lr_leaves.items()] if lr_leaves else [])
            gs = torch.autograd.grad(loss, [v for _, v in wrt], allow_unused=True)
            task = {k: (g if g is not None else torch.zeros_like(v)) for (k, v), g in zip(wrt, gs, strict=True)}
        elif cfg.algorithm == "fomaml":
            detached = {k: v.detach().requires_grad_(True) for k, v in start.items()}
            fast = adapt_autograd(model, detached, support, eps_in, cfg, lr, create_graph=False)
            moved = {k: start[k] + (fast[k] - start[k]).detach() for k in start}
            loss = per_pixel_loss(model, moved, query, eps_q)
            names = list(leaves)
            task = dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True),
                            strict=True))
            task = {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in task.items()}
        else:  # reptile
            data = torch.cat([support, query])
            fast = adapt_autograd(model, start, data, eps_in, cfg, lr, create_graph=False)
            with torch.no_grad():
                loss = per_pixel_loss(model, fast, query, eps_q)
                task = {k: leaves[k] - fast[k] for k in leaves}
            if model.conditional:
                set_keys = [k for k in leaves if k.startswith(model.SET_ENCODER)]
                pull = context_pull(model, {k: leaves[k] for k in set_keys} | {k: v.detach() for k, v in leaves.items()
                                                                                 if k not in set_keys},
                                     support, fast[CONTEXT].detach(), keep)
                task.update(zip(set_keys, torch.autograd.grad(pull, [leaves[k] for k in set_keys]), strict=True))
        losses.append(loss.detach())
        for k, g in task.items():
            total[k] = total.get(k, 0) + g.detach()
    n = len(batch)
    return torch.stack(losses).mean(), {k: v / n for k, v in total.items()}
