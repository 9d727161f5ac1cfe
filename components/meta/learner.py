"""The meta-learner: meta-parameters (+ Meta-SGD's learned rates), the outer Adam, ``meta_step``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from components.errors import TrainingError
from components.meta.adaptation import AdaptationRule
from components.meta.algorithms import AlgoConfig, adapt_keys, default_impl, key_shape, meta_gradients
from components.meta.tasks import TaskBatch
from components.models.vae import ConvVAE, Weights, param_dict
from components.params import MetaParams

Reducer = Callable[[Tensor], Tensor]


def algo_config(meta: MetaParams, model: ConvVAE) -> AlgoConfig:
    """The meta-gradient's inner loop: the training rule (:meth:`AdaptationRule.for_training`)."""
    rule = AdaptationRule.for_training(meta)
    return AlgoConfig(meta.algorithm, rule.steps, rule.inner_lr, adapt_keys(model, rule.scope))


class MetaLearner:
    def __init__(self, model: ConvVAE, meta: MetaParams) -> None:
        self.model = model
        self.meta = meta
        self.algo = algo_config(meta, model)
        self.impl = default_impl(model, self.algo)
        self.lrs: nn.ParameterDict | None = None
        if meta.algorithm == "metasgd":
            self.lrs = nn.ParameterDict({
                k.replace(".", "__"): nn.Parameter(torch.full(key_shape(model, k), meta.inner_lr)) for k in self.algo.keys
            })
        self.optimizer = torch.optim.Adam(self.parameters(), lr=meta.outer_lr)

    # --- meta-parameters ----------------------------------------------------------------
    def named_meta_parameters(self) -> dict[str, nn.Parameter]:
        out = dict(self.model.named_parameters())
        if self.lrs is not None:
            out.update({f"lr::{k.replace('__', '.')}": v for k, v in self.lrs.items()})
        return out

    def parameters(self) -> list[nn.Parameter]:
        return list(self.named_meta_parameters().values())

    def params(self) -> Weights:
        return param_dict(self.model)

    def inner_lrs(self) -> Weights | None:
        if self.lrs is None:
            return None
        return {k.replace("__", "."): v.detach() for k, v in self.lrs.items()}

    def set_outer_lr_factor(self, factor: float) -> None:
        """The outer Adam's rate for the next steps: ``meta.outer_lr`` times ``factor`` (the schedule)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.meta.outer_lr * factor

    # --- one meta-step --------------------------------------------------------------------
    def compute_gradients(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean outer loss and meta-gradient over the tasks of ``batch`` (no parameter change)."""
        return meta_gradients(self.model, self.params(), self.inner_lrs(), batch, self.algo, impl=self.impl)

    def apply_gradients(self, grads: dict[str, Tensor]) -> float:
        """Set ``.grad``, clip to ``meta.grad_clip``, take one Adam step; return the pre-clip norm."""
        for name, p in self.named_meta_parameters().items():
            p.grad = grads[name].to(p.dtype).clone()
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.meta.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lrs is not None:
            with torch.no_grad():
                for p in self.lrs.values():
                    p.clamp_(min=0.0)
        return float(norm)

    def meta_step(self, batch: TaskBatch, weight: float = 1.0, reduce: Reducer | None = None) -> dict[str, float]:
        """Compute, (optionally) all-reduce and apply the meta-gradient; return metrics.

        With data-parallel workers each passes its shard, ``weight = len(shard) / meta_batch`` and
        a sum all-reduce, so every worker applies the gradient of the whole meta-batch.
        """
        loss, grads = self.compute_gradients(batch)
        names = list(grads)
        flat = torch.cat([grads[k].reshape(-1) for k in names] + [loss.reshape(1)]) * weight
        if reduce is not None:
            flat = reduce(flat)
        if not bool(torch.isfinite(flat).all()):
            what = "loss" if not bool(torch.isfinite(flat[-1])) else "meta-gradient"
            raise TrainingError(f"non-finite {what} (inner lr {self.meta.inner_lr:g}, outer lr "
                                f"{self.meta.outer_lr:g}): lower meta.inner_lr or meta.outer_lr; "
                                "the parameters were not updated and no checkpoint of this step is written")
        loss = flat[-1]
        out, offset = {}, 0
        for k in names:
            n = grads[k].numel()
            out[k] = flat[offset : offset + n].view_as(grads[k])
            offset += n
        norm = self.apply_gradients(out)
        return {"train_loss": float(loss), "grad_norm": norm}

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "lrs": self.lrs.state_dict() if self.lrs is not None else None,
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.lrs is not None and state.get("lrs") is not None:
            self.lrs.load_state_dict(state["lrs"])
        self.optimizer.load_state_dict(state["optimizer"])
