"""In-process meta-training: ``train_step`` (shared with Ray Train), validation, checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from components.data.prepare import Split, load_split
from components.errors import CheckpointError
from components.meta.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from components.meta.adaptation import AdaptationRule
from components.meta.learner import MetaLearner, Reducer
from components.meta.tasks import TaskBatch, TaskSampler
from components.models.vae import VAEConfig, build_vae, per_pixel_loss
from components.params import MetaParams, Params

log = logging.getLogger(__name__)


def vae_config(params: Params, split: Split) -> VAEConfig:
    _, c, h, _ = split.images.shape
    return VAEConfig.from_params(params.model, channels=c, image_size=h)


def build_learner(meta: MetaParams, cfg: VAEConfig, seed: int) -> MetaLearner:
    return MetaLearner(build_vae(cfg, seed=seed), meta)


def make_sampler(params: Params, split: Split, seed: int) -> TaskSampler:
    return TaskSampler(split, params.meta.k_shot, params.meta.k_query, params.model.latent_dim,
                       params.meta.inner_steps, seed, rotate_classes=params.meta.rotate_classes)


def train_step(learner: MetaLearner, batch: TaskBatch, rank: int = 0, world: int = 1,
               reduce: Reducer | None = None) -> dict[str, float]:
    """One meta-step on this worker's share (``rank::world``) of the meta-batch."""
    shard = batch.shard(rank, world) if world > 1 else batch
    return learner.meta_step(shard, weight=len(shard) / len(batch), reduce=reduce)


@torch.no_grad()
def _nats(learner: MetaLearner, p: dict, x: torch.Tensor, eps: torch.Tensor) -> float:
    return float(per_pixel_loss(learner.model, p, x, eps)) * learner.model.num_pixels


def training_rule(meta: MetaParams) -> AdaptationRule:
    """The inner loop as meta-training runs it (validation adapts exactly so)."""
    scope = "all" if meta.algorithm == "reptile" else meta.adapt_scope
    return AdaptationRule(steps=meta.inner_steps, inner_lr=meta.inner_lr, scope=scope,
                          learned_lrs=meta.algorithm == "metasgd", sampling="prior", temperature=1.0)


def validate(learner: MetaLearner, sampler: TaskSampler, n_tasks: int, seed: int) -> dict[str, float]:
    """Query negative ELBO (nats/image) after adapting on each task's support, and before
    (before: the set encoder's context without gradient steps, for a set-conditioned VAE)."""
    device = next(learner.model.parameters()).device
    batch = sampler.sample(step=0, batch_size=n_tasks).to(device)
    gen = torch.Generator().manual_seed(seed)
    rule = training_rule(learner.meta)
    unadapted = replace(rule, steps=0)
    adapted, before = [], []
    base, lrs = learner.params(), learner.inner_lrs()
    for t in range(len(batch)):
        fast = rule.adapt(learner.model, base, lrs, batch.support[t], gen)
        start = unadapted.adapt(learner.model, base, lrs, batch.support[t], gen)
        adapted.append(_nats(learner, fast, batch.query[t], batch.eps_query[t]))
        before.append(_nats(learner, start, batch.query[t], batch.eps_query[t]))
    return {"val_loss": sum(adapted) / len(adapted), "val_loss_unadapted": sum(before) / len(before)}


@dataclass
class TrainState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def checkpoint_payload(learner: MetaLearner, params: Params, cfg: VAEConfig, state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "learner": learner.state_dict(),
        "rng": torch.get_rng_state(),
        "history": state.history,
        "params": params.model_dump(mode="json"),
        "vae": cfg.__dict__,
    }


@dataclass
class Restored:
    learner: MetaLearner
    cfg: VAEConfig
    state: TrainState
    params: dict[str, Any]  # the params it was trained with, as stored (may predate today's schema)


def resume_into(learner: MetaLearner, payload: dict[str, Any]) -> TrainState:
    """Load a checkpoint's state into ``learner`` (already on its device) and the global RNG."""
    try:
        learner.load_state_dict(payload["learner"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint does not match this model: {err}") from None
    torch.set_rng_state(payload["rng"])
    return TrainState(step=int(payload["step"]), history=list(payload["history"]))


def restore(payload: dict[str, Any]) -> Restored:
    """Rebuild the learner from a checkpoint: only its ``meta`` section and the VAE config matter."""
    try:
        meta = MetaParams.model_validate(payload["params"]["meta"])
        cfg = VAEConfig(**payload["vae"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint does not match this version of metagen: {err}") from None
    learner = build_learner(meta, cfg, seed=0)
    state = resume_into(learner, payload)
    return Restored(learner, cfg, state, payload["params"])


def load_learner(path: Path) -> Restored:
    return restore(load_checkpoint(path))


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    history: list[dict[str, float]]

    @property
    def final_val_loss(self) -> float | None:
        vals = [h["val_loss"] for h in self.history if "val_loss" in h]
        return vals[-1] if vals else None


def train_local(
    params: Params,
    prepared_dir: Path,
    out_dir: Path,
    progress: bool = True,
    stop_after: int | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Meta-train for ``train.steps`` steps in this process, resuming from ``out_dir`` if it holds
    a checkpoint of the same params. ``stop_after`` ends early (tests of resumption)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    train_split = load_split(prepared_dir, "train")
    val_split = load_split(prepared_dir, "val")
    cfg = vae_config(params, train_split)
    ckpt = Path(out_dir) / FILENAME
    learner, state = build_learner(params.meta, cfg, params.train.seed), TrainState()
    if ckpt.is_file():
        payload = load_checkpoint(ckpt)
        if payload["params"] == params.model_dump(mode="json"):
            restored = restore(payload)
            learner, state = restored.learner, restored.state
            log.info("resuming from %s at step %d", ckpt, state.step)
        else:
            log.info("ignoring %s: trained with other params", ckpt)
    sampler = make_sampler(params, train_split, params.train.seed)
    val_sampler = make_sampler(params, val_split, params.train.seed + 1)
    last = params.train.steps if stop_after is None else min(stop_after, params.train.steps)
    columns = [TextColumn("meta-train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=params.train.steps, completed=state.step, info="")
        while state.step < last:
            batch = sampler.sample(state.step, params.meta.meta_batch_size)
            metrics = train_step(learner, batch)
            state.step += 1
            record: dict[str, float] = {"step": state.step, **metrics}
            if state.step % params.train.val_every == 0 or state.step == params.train.steps:
                record.update(validate(learner, val_sampler, params.train.val_tasks, params.train.seed))
            if state.step % params.train.report_every == 0 or "val_loss" in record:
                state.history.append(record)
                if on_metrics is not None:
                    on_metrics(state.step, record)
            if state.step % params.train.checkpoint_every == 0 or state.step == last:
                save_checkpoint(ckpt, checkpoint_payload(learner, params, cfg, state))
            info = f"loss {metrics['train_loss']:.4f}" + (f" val {record['val_loss']:.1f}" if "val_loss" in record else "")
            bar.update(task, completed=state.step, info=info)
    return TrainResult(checkpoint=ckpt, step=state.step, history=state.history)
