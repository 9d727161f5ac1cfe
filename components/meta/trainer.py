"""In-process meta-training: ``train_step`` (shared with Ray Train), validation, checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torchvision.utils import make_grid

from components.data.prepare import Split, load_split
from components.errors import CheckpointError, TrainingError
from components.lr_schedule import lr_factor
from components.meta.checkpoint import FILENAME, load_checkpoint, save_checkpoint, training_folder
from components.meta.adaptation import AdaptationRule
from components.meta.learner import MetaLearner, Reducer
from components.meta.tasks import TaskBatch, TaskSampler
from components.models.vae import VAEConfig, build_vae, new_vae, per_pixel_loss
from components.params import MetaParams, ModelParams, Params
from components.stopping import raise_if_stopped, stop_reason

log = logging.getLogger(__name__)


def vae_config(model: ModelParams, split: Split) -> VAEConfig:
    _, c, h, _ = split.images.shape
    return VAEConfig.from_params(model, channels=c, image_size=h)


def build_learner(meta: MetaParams, cfg: VAEConfig, seed: int) -> MetaLearner:
    return MetaLearner(build_vae(cfg, seed=seed), meta)


def make_sampler(params: Params, split: Split, seed: int, training: bool = True,
                 noise_dim: int | None = None) -> TaskSampler:
    """Meta-training's tasks (rotated classes until ``meta.upright_steps`` before the end, context
    dropout), or with ``training=False`` validation's: upright classes and their full context, the
    tasks the evaluation and the users give. ``noise_dim``: the model's noise an image (default:
    that of the model ``params`` builds)."""
    meta, binary = params.meta, params.model.binarize
    noise = new_vae(vae_config(params.model, split)).noise_dim if noise_dim is None else noise_dim
    if not training:
        return TaskSampler(split, meta.k_shot, meta.k_query, noise, meta.inner_steps, seed, binarize=binary)
    return TaskSampler(split, meta.k_shot, meta.k_query, noise, meta.inner_steps, seed,
                       rotate_classes=meta.rotate_classes, context_dropout=meta.context_dropout,
                       rotate_until=max(params.train.steps - meta.upright_steps, 0), binarize=binary)


def train_step(learner: MetaLearner, batch: TaskBatch, rank: int = 0, world: int = 1,
               reduce: Reducer | None = None) -> dict[str, float]:
    """One meta-step on this worker's share (``rank::world``) of the meta-batch."""
    shard = batch.shard(rank, world) if world > 1 else batch
    return learner.meta_step(shard, weight=len(shard) / len(batch), reduce=reduce)


@torch.no_grad()
def _nats(learner: MetaLearner, p: dict, x: torch.Tensor, eps: torch.Tensor) -> float:
    return float(per_pixel_loss(learner.model, p, x, eps)) * learner.model.num_pixels


def validate(learner: MetaLearner, sampler: TaskSampler, n_tasks: int, seed: int) -> dict[str, float]:
    """Query negative ELBO (nats/image) after adapting on each task's support, and before
    (before: the set encoder's context without gradient steps, for a set-conditioned VAE)."""
    device = next(learner.model.parameters()).device
    batch = sampler.sample(step=0, batch_size=n_tasks).to(device)
    gen = torch.Generator().manual_seed(seed)
    rule = AdaptationRule.for_training(learner.meta)
    unadapted = replace(rule, steps=0)
    adapted, before = [], []
    base, lrs = learner.params(), learner.inner_lrs()
    for t in range(len(batch)):
        fast = rule.adapt(learner.model, base, lrs, batch.support[t], gen)
        start = unadapted.adapt(learner.model, base, lrs, batch.support[t], gen)
        adapted.append(_nats(learner, fast, batch.query[t], batch.eps_query[t]))
        before.append(_nats(learner, start, batch.query[t], batch.eps_query[t]))
    return {"val_loss": sum(adapted) / len(adapted), "val_loss_unadapted": sum(before) / len(before)}


@torch.no_grad()
def validation_grid(learner: MetaLearner, sampler: TaskSampler, seed: int, tasks: int = 4, n: int = 6) -> torch.Tensor:
    """What the generator makes of meta-val classes now: per row a class's K supports, then ``n``
    samples after adapting as in training (uint8, C x H x W), so the dashboards show it improve."""
    device = next(learner.model.parameters()).device
    batch = sampler.sample(step=0, batch_size=tasks).to(device)
    gen = torch.Generator().manual_seed(seed)
    rule = AdaptationRule.for_training(learner.meta)
    rows = []
    for t in range(len(batch)):
        support = batch.support[t]
        samples = rule.generate(learner.model, learner.params(), learner.inner_lrs(), support, n, gen)
        rows.append(torch.cat([support, torch.ones_like(support[:1]), samples]).cpu())
    grid = make_grid(torch.cat(rows), nrow=len(rows[0]), padding=2, pad_value=0.5)
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8)


@dataclass
class TrainState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    grids: dict[int, torch.Tensor] = field(default_factory=dict)  # validation step -> uint8 sample grid


def checkpoint_payload(learner: MetaLearner, params: Params, cfg: VAEConfig, state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "learner": learner.state_dict(),
        "rng": torch.get_rng_state(),
        "history": state.history,
        "val_grids": state.grids,
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
    return TrainState(step=int(payload["step"]), history=list(payload["history"]),
                      grids=dict(payload.get("val_grids") or {}))


def rebuild_learner(meta: dict[str, Any], vae: dict[str, Any], weights: dict[str, Any] | None = None,
                    what: str = "checkpoint") -> tuple[MetaLearner, VAEConfig]:
    """The one rebuild of a learner from what was stored with it (a checkpoint's or a registered
    model's ``meta`` section and VAE config), with its weights and Meta-SGD rates if given
    (``{"model": ..., "lrs": ...}``)."""
    try:
        cfg = VAEConfig(**vae)
        learner = build_learner(MetaParams.model_validate(meta), cfg, seed=0)
        if weights is not None:
            learner.model.load_state_dict(weights["model"])
            if learner.lrs is not None and weights.get("lrs") is not None:
                learner.lrs.load_state_dict(weights["lrs"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{what} does not match this version of metagen: {err}") from None
    return learner, cfg


def restore(payload: dict[str, Any]) -> Restored:
    """A checkpoint's learner, optimizer state, RNG and history."""
    try:
        meta, vae = payload["params"]["meta"], payload["vae"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint does not match this version of metagen: missing {err}") from None
    learner, cfg = rebuild_learner(meta, vae)
    state = resume_into(learner, payload)
    return Restored(learner, cfg, state, payload["params"])


def load_learner(path: Path) -> Restored:
    return restore(load_checkpoint(path))


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    history: list[dict[str, float]]
    grids: dict[int, torch.Tensor] = field(default_factory=dict)
    resumed_from: list[int] = field(default_factory=list)  # Ray Train: steps a restarted worker group resumed from

    @property
    def final_val_loss(self) -> float | None:
        vals = [h["val_loss"] for h in self.history if "val_loss" in h]
        return vals[-1] if vals else None


class LoopHooks(Protocol):
    """What differs between the in-process trainer and a Ray Train worker."""

    def before_step(self, step: int) -> None:
        """Called before meta-step ``step + 1`` (Ray: fault injection for tests)."""

    def after_step(self, state: TrainState, record: dict[str, float] | None, checkpoint: bool) -> None:
        """After a step: ``record`` when one is due (else None), ``checkpoint`` when one is due."""

    def stop_requested(self) -> bool:
        """True: end the loop now (:mod:`components.stopping`), without a last checkpoint."""


@dataclass
class Shard:
    """This worker's place in data-parallel training (one worker in-process)."""

    rank: int = 0
    world: int = 1
    reduce: Reducer | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def run_loop(learner: MetaLearner, params: Params, state: TrainState, train: Split, val: Split, hooks: LoopHooks,
             shard: Shard | None = None, last: int | None = None) -> TrainState:
    """The one meta-training loop (in-process and every Ray Train worker): draw the step's tasks,
    take the meta-step on this worker's share, and at the cadence of :meth:`TrainParams.due`
    record, validate (rank 0) and hand over to the hooks to report and checkpoint."""
    shard = shard or Shard()
    t = params.train
    noise = learner.model.noise_dim
    sampler = make_sampler(params, train, t.seed, noise_dim=noise)
    val_sampler = make_sampler(params, val, t.seed + 1, training=False, noise_dim=noise)
    last = t.steps if last is None else min(last, t.steps)
    done, started = 0, time.perf_counter()
    while state.step < last and not hooks.stop_requested():
        hooks.before_step(state.step)
        learner.set_outer_lr_factor(lr_factor(t.lr_schedule, state.step, t.steps))
        batch = sampler.sample(state.step, params.meta.meta_batch_size).to(shard.device)
        try:
            metrics = train_step(learner, batch, shard.rank, shard.world, shard.reduce)
        except TrainingError as err:
            raise TrainingError(f"meta-step {state.step + 1}: {err}") from None
        state.step += 1
        done += 1
        due = t.due(state.step)
        record: dict[str, float] | None = None
        if due.report:
            record = {"step": float(state.step), **metrics, "world_size": float(shard.world),
                      "steps_per_s": done / (time.perf_counter() - started)}
            if due.validate and shard.rank == 0:
                record.update(validate(learner, val_sampler, t.val_tasks, t.seed))
                state.grids[state.step] = validation_grid(learner, val_sampler, t.seed)
            if shard.rank == 0:
                state.history.append(record)
        hooks.after_step(state, record, due.checkpoint or state.step == last)
    return state


class _LocalHooks:
    """In-process: a progress bar, MLflow-style callbacks and a checkpoint file."""

    def __init__(self, learner: MetaLearner, params: Params, cfg: VAEConfig, ckpt: Path, bar: Any, task: Any,
                 on_metrics: Callable[[int, dict[str, float]], None] | None) -> None:
        self.learner, self.params, self.cfg, self.ckpt = learner, params, cfg, ckpt
        self.bar, self.task, self.on_metrics = bar, task, on_metrics

    def before_step(self, step: int) -> None:
        return None

    def stop_requested(self) -> bool:
        return stop_reason() is not None

    def after_step(self, state: TrainState, record: dict[str, float] | None, checkpoint: bool) -> None:
        if record is not None and self.on_metrics is not None:
            self.on_metrics(state.step, record)
        if checkpoint:
            save_checkpoint(self.ckpt, checkpoint_payload(self.learner, self.params, self.cfg, state))
        info = "" if record is None else f"loss {record['train_loss']:.4f}" + (
            f" val {record['val_loss']:.1f}" if "val_loss" in record else "")
        self.bar.update(self.task, completed=state.step, **({"info": info} if info else {}))


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
    with training_folder(out_dir):
        return _train_local(params, prepared_dir, out_dir, progress, stop_after, on_metrics)


def _train_local(params: Params, prepared_dir: Path, out_dir: Path, progress: bool, stop_after: int | None,
                 on_metrics: Callable[[int, dict[str, float]], None] | None) -> TrainResult:
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    train_split = load_split(prepared_dir, "train")
    val_split = load_split(prepared_dir, "val")
    cfg = vae_config(params.model, train_split)
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
    columns = [TextColumn("meta-train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=params.train.steps, completed=state.step, info="")
        hooks = _LocalHooks(learner, params, cfg, ckpt, bar, task, on_metrics)
        state = run_loop(learner, params, state, train_split, val_split, hooks, last=stop_after)
    raise_if_stopped(state.step)
    return TrainResult(checkpoint=ckpt, step=state.step, history=state.history, grids=state.grids)
