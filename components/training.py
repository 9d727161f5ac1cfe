"""Data-parallel meta-training with Ray Train (V2): one worker per share of the meta-batch.

Every worker draws the same meta-batch for a step (seeded by ``(seed, step)``) and keeps its share
``rank::world``; meta-gradients are summed across workers with ``torch.distributed`` (gloo on CPU,
NCCL on CUDA; Ray's ``TorchTrainer`` sets the process group up), so each worker applies the
gradient of the whole meta-batch to identical parameters. Rank 0 validates, reports and
checkpoints; a restarted worker group resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from components.data.prepare import load_split
from components.errors import MetagenError, ServerUnreachable
from components.net import check_ray_address, ray_address
from components.meta.checkpoint import FILENAME, load_checkpoint, save_checkpoint, training_folder
from components.meta.learner import MetaLearner
from components.meta.trainer import (
    Shard,
    TrainResult,
    TrainState,
    build_learner,
    checkpoint_payload,
    resume_into,
    run_loop,
    vae_config,
)
from components.models.vae import VAEConfig
from components.params import Params, TrainParams, validate_params
from components.stopping import StopFlag, TrainingStopped, raise_if_stopped, stop_reason, stop_requested_wait
from components.threads import figure_threads
from components.timing import phase
from components.evaluation.parallel import Mapper, mapper_for

log = logging.getLogger(__name__)
FAULT_MARKER = ".fault_injected"


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _inject_fault(train: TrainParams, step: int, rank: int, world: int, run_dir: Path) -> None:
    """Test hook (``train.fail_at_step``): the last rank dies once, hard, at that step."""
    if train.fail_at_step != step or rank != world - 1:
        return
    marker = run_dir / FAULT_MARKER
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"rank {rank} killed at step {step}\n")
    os._exit(1)


STOP_POLL_S = 1.0


class _RayHooks:
    """Ray Train worker: fault injection (tests), ``ray.train.report`` with a ``Checkpoint`` (rank 0)."""

    def __init__(self, learner: MetaLearner, params: Params, cfg: VAEConfig, shard: Shard, run_dir: Path,
                 stop_flag: Any = None) -> None:
        self.learner, self.params, self.cfg, self.shard, self.run_dir = learner, params, cfg, shard, run_dir
        self.stop_flag, self.last_poll = stop_flag, time.monotonic()

    def before_step(self, step: int) -> None:
        _inject_fault(self.params.train, step, self.shard.rank, self.shard.world, self.run_dir)

    def stop_requested(self) -> bool:
        """The stop flag, read at most once a second (a Ray call per meta-step would cost the training)."""
        import ray

        now = time.monotonic()
        if self.stop_flag is None or now - self.last_poll < STOP_POLL_S:
            return False
        self.last_poll = now
        return ray.get(self.stop_flag.get.remote()) is not None

    def after_step(self, state: TrainState, record: dict[str, float] | None, checkpoint: bool) -> None:
        import ray.train

        if record is None and not checkpoint:
            return
        record = record if record is not None else {"step": float(state.step)}
        if not (checkpoint and self.shard.rank == 0):
            ray.train.report(record)
            return
        with tempfile.TemporaryDirectory(prefix="metagen-ckpt-") as tmp:
            save_checkpoint(Path(tmp) / FILENAME, checkpoint_payload(self.learner, self.params, self.cfg, state))
            ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """The Ray Train worker function: params re-validated once from their JSON (the process
    boundary), then the same loop as in-process (:func:`components.meta.trainer.run_loop`)."""
    import ray.train
    import ray.train.torch

    params = validate_params(config["params"], source="train_loop_config")
    prepared, run_dir = Path(config["prepared_dir"]), Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = ray.train.torch.get_device() if params.train.use_gpu else torch.device("cpu")
    shard = Shard(rank, world, _all_reduce_sum if world > 1 else None, device)

    train_split, val_split = load_split(prepared, "train"), load_split(prepared, "val")
    cfg = vae_config(params.model, train_split)
    learner, state = build_learner(params.meta, cfg, params.train.seed), TrainState()
    learner.model.to(device)  # in place: the optimizer keeps its parameters
    if learner.lrs is not None:
        learner.lrs.to(device)
    resumed_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = resume_into(learner, load_checkpoint(Path(d)))
        resumed_from = state.step
        log.warning("worker rank %d resumed from the step-%d checkpoint", rank, state.step)
    first = state.step + 1
    hooks = _RayHooks(learner, params, cfg, shard, run_dir, config.get("stop_flag"))
    state = run_loop(learner, params, state, train_split, val_split, hooks, shard)
    summary = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
               "resumed_from": resumed_from, "first_step": first if state.step >= first else None,
               "last_step": state.step, "world_size": world, "device": str(device)}
    _write_worker_summary(run_dir, summary)
    return summary


def _write_worker_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Each worker leaves a line of where it ran and which steps it did (observability, tests)."""
    folder = run_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{summary['rank']}-pid{summary['pid']}.json").write_text(json.dumps(summary) + "\n")


def worker_summaries(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "workers").glob("*.json"))]


_RAY_INIT = threading.Lock()


def init_ray(train: TrainParams) -> None:
    """Connect to ``RAY_ADDRESS`` / ``train.ray_address``, or start a local Ray on this machine
    (once, whichever of the run's concurrent steps asks first)."""
    with _RAY_INIT:
        if threading.current_thread() is threading.main_thread():
            _init_ray(train)
        else:
            _init_ray_in_keeper_thread(train)


def _init_ray_in_keeper_thread(train: TrainParams) -> None:
    """``ray.init`` from a thread that lives as long as the process. A local Ray's processes are
    started with PR_SET_PDEATHSIG, which Linux fires when the *thread* that started them exits: a
    Ray started from a step's worker thread would die with that thread's pool."""
    done = threading.Event()
    errors: list[BaseException] = []

    def keeper() -> None:
        try:
            _init_ray(train)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            errors.append(err)
        finally:
            done.set()
        threading.Event().wait()

    threading.Thread(target=keeper, name="ray-keeper", daemon=True).start()
    done.wait()
    if errors:
        raise errors[0]


def _init_ray(train: TrainParams) -> None:
    import ray

    if ray.is_initialized():
        return
    address = ray_address(train)
    runtime_env = {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
    if address:
        check_ray_address(address)
        try:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        except (ConnectionError, RuntimeError) as err:
            raise ServerUnreachable(f"cannot reach the Ray cluster at {address!r} (RAY_ADDRESS / train.ray_address): {err}") from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=False, runtime_env=runtime_env,
                 include_dashboard=True, dashboard_host="127.0.0.1")


@contextmanager
def stop_flag_for_workers() -> Iterator[Any]:
    """A :class:`StopFlag` actor for this run's workers, set from here by a thread as soon as
    :func:`components.stopping.request_stop` is called (the driver blocks in ``trainer.fit()``)."""
    import ray

    flag = ray.remote(num_cpus=0)(StopFlag).remote()
    done = threading.Event()

    def relay() -> None:
        while not done.is_set():
            if stop_requested_wait(0.5):
                flag.set.remote(stop_reason())
                return

    thread = threading.Thread(target=relay, name="stop-relay", daemon=True)
    thread.start()
    try:
        yield flag
    finally:
        done.set()
        thread.join(2)
        ray.kill(flag)


def eval_mapper(params: Params) -> Mapper:
    """Where the evaluation runs: spread over the Ray cluster this run trains on (``eval.distributed``),
    or in this process."""
    return mapper_for(params.eval.distributed, lambda: init_ray(params.train), figure_threads(params.train))


def build_trainer(params: Params, prepared_dir: Path, storage_path: Path, name: str,
                  callbacks: list | None = None, placement_strategy: str = "PACK", stop_flag: Any = None):  # noqa: ANN201
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = params.train
    storage_path = Path(storage_path).resolve()
    threads = max(1, int(t.num_threads or t.cpus_per_worker))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"params": params.model_dump(mode="json"), "prepared_dir": str(Path(prepared_dir).resolve()),
                           "run_dir": str(storage_path / name), "threads": threads, "stop_flag": stop_flag},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker},
                                     placement_strategy=placement_strategy),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
    )


def _progress_callback(queue: Any) -> Any:
    """A Ray Train callback (it runs in the Train controller, wherever that is) that forwards rank
    0's reports to ``queue`` (a :class:`ray.util.queue.Queue`) for the driver to show."""
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics:
                queue.put_nowait(dict(metrics[0]))

    return ForwardReports()


@contextmanager
def _shown_progress(total: int, show: bool) -> Iterator[list[Any]]:
    """While Ray trains: step, loss, validation, steps/s and time left in the terminal, from the
    workers' reports; yields the callbacks to give the trainer."""
    if not show:
        yield []
        return
    from ray.util.queue import Empty, Queue
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    queue, done = Queue(actor_options={"num_cpus": 0}), threading.Event()
    columns = [TextColumn("meta-train (Ray Train)"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn()]

    def follow(bar: Progress, task: Any) -> None:
        first: tuple[int, float] | None = None
        shown = dict.fromkeys(("loss", "val", "rate"), "")  # shown in this order
        while not done.is_set():
            try:
                record = queue.get(timeout=0.5)
            except Empty:
                continue
            step, now = int(record.get("step", 0)), time.perf_counter()
            first = first or (step, now)
            if "train_loss" in record:
                shown["loss"] = f"loss {record['train_loss']:.2f}"
            if "val_loss" in record:
                shown["val"] = f"val -ELBO {record['val_loss']:.1f}"
            if now > first[1]:
                shown["rate"] = f"{(step - first[0]) / (now - first[1]):.2f} steps/s"
            bar.update(task, completed=step, info="  ".join(v for v in shown.values() if v))

    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("train", total=total, info="starting the worker group")
        thread = threading.Thread(target=follow, args=(bar, task), name="train-progress", daemon=True)
        thread.start()
        try:
            yield [_progress_callback(queue)]
        finally:
            done.set()
            thread.join(5)
            queue.shutdown()


def train_distributed(params: Params, prepared_dir: Path, out_dir: Path, name: str | None = None,
                      placement_strategy: str = "PACK", progress: bool = True) -> TrainResult:
    """Fit with Ray Train and copy the final checkpoint to ``out_dir`` (same layout as ``train_local``);
    ``progress``: the workers' reports shown in the terminal as they come."""
    with training_folder(out_dir):
        return _train_distributed(params, prepared_dir, out_dir, name, placement_strategy, progress)


def _train_distributed(params: Params, prepared_dir: Path, out_dir: Path, name: str | None, placement_strategy: str,
                       progress: bool) -> TrainResult:
    from ray.train.v2.api.exceptions import TrainingFailedError

    with phase("ray start-up", "overhead"):
        init_ray(params.train)
    name = name or f"metagen-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    try:
        with (phase("ray train fit"), _shown_progress(params.train.steps, progress) as callbacks,
              stop_flag_for_workers() as stop_flag):
            trainer = build_trainer(params, prepared_dir, Path(params.train.storage_path), name,
                                    callbacks=callbacks, placement_strategy=placement_strategy, stop_flag=stop_flag)
            result = _interruptible_fit(trainer)
        steps = [int(s["last_step"]) for s in worker_summaries(Path(params.train.storage_path).resolve() / name)]
        raise_if_stopped(max(steps, default=0))
    except (KeyboardInterrupt, TrainingStopped):
        run_dir = Path(params.train.storage_path) / name
        if run_dir.is_dir() and not any(p.name.startswith("checkpoint_") for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run that kept nothing
        raise
    except TrainingFailedError as err:
        raise MetagenError(f"Ray Train run {name!r} failed after {params.train.max_failures} retries: {err}") from None
    if result.checkpoint is None:
        raise MetagenError(f"Ray Train run {name!r} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        payload = load_checkpoint(Path(d))
    out = Path(out_dir) / FILENAME
    save_checkpoint(out, {k: v for k, v in payload.items() if k != "format"})
    run_dir = Path(params.train.storage_path).resolve() / name
    resumed = sorted({int(s["resumed_from"]) for s in worker_summaries(run_dir) if s.get("resumed_from") is not None})
    if resumed:
        log.warning("Ray Train run %s: the worker group failed and was restarted, resuming from the checkpoint "
                    "of step %s (see %s)", name, ", ".join(map(str, resumed)), run_dir)
    return TrainResult(checkpoint=out, step=int(payload["step"]), history=list(payload["history"]),
                       grids=dict(payload.get("val_grids") or {}), resumed_from=resumed)


def _interruptible_fit(trainer: Any) -> Any:
    """``trainer.fit()`` whose Ctrl-C is a KeyboardInterrupt, as everywhere else. Ray Train installs
    a SIGINT handler of its own that aborts the run and ends the process with ``sys.exit``, and
    leaves it installed after the fit; here its exit becomes an interrupt and the previous handler
    is back once the fit returns."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    except SystemExit as exc:
        raise KeyboardInterrupt("Ray Train run interrupted") from exc
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)
