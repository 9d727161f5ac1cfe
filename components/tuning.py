"""Ray Tune over ``tune.search_space`` with ASHA early stopping, the Train V2 way: each trial is a
function that builds and fits a ``TorchTrainer`` and forwards its reports to Tune.

Each rank-0 report carries ``val_loss`` (reports are made at validation steps only), and is one
``training_iteration`` for ASHA. Trials get a tiny CPU share for their driver; their Train workers
hold real CPUs, and ``max_concurrent_trials`` is capped so that they always fit (no deadlock).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.atomic import write_text_atomic
from components.errors import MetagenError
from components.params import Params, TrainParams, TuneParams, validate_params, with_updates
from components.training import build_trainer, init_ray

log = logging.getLogger(__name__)
METRIC = "val_loss"


def trial_params(params: Params, sample: dict[str, Any]) -> Params:
    """The trial's params: the sample applied, ``tune.max_steps`` steps (the upright share of
    ``meta.upright_steps`` kept), a report per validation."""
    t = params.tune
    val_every = min(t.val_every, t.max_steps)
    upright_share = min(params.meta.upright_steps / params.train.steps, 1.0)  # the curriculum, scaled
    updates = {
        **sample,
        "train.steps": t.max_steps,
        "meta.upright_steps": round(t.max_steps * upright_share),
        "train.val_every": val_every,
        "train.report_every": val_every,
        "train.checkpoint_every": val_every * max(1, params.train.checkpoint_every // val_every),
        "train.fail_at_step": None,
    }
    return with_updates(params, updates)


def search_space(settings: TuneParams) -> dict[str, Any]:
    """``tune.search_space`` as Ray Tune's sampling domains (a grid for explicit values)."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in settings.search_space.items():
        if dim.values is not None:
            space[key] = tune.grid_search(list(dim.values))
        elif dim.integer:
            space[key] = tune.lograndint(int(dim.low), int(dim.high) + 1) if dim.log else tune.randint(int(dim.low), int(dim.high) + 1)
        else:
            space[key] = tune.loguniform(dim.low, dim.high) if dim.log else tune.uniform(dim.low, dim.high)
    return space


def max_concurrent_trials(train: TrainParams, cluster_cpus: float) -> int:
    """Trials whose Train workers fit in the cluster's CPUs at once (at least 1)."""
    per_trial = train.num_workers * train.cpus_per_worker
    return max(1, int(cluster_cpus // per_trial))


def _trial(config: dict[str, Any]) -> None:
    """One trial: fit a TorchTrainer with the sampled params, forwarding reports to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    base = validate_params(config["base_params"], source="tune base params")
    sample = {k: v for k, v in config.items() if k not in ("base_params", "prepared_dir", "storage_path")}
    params = trial_params(base, sample)
    # the trial's own driver holds 0.01 CPU: its workers take 0.01 less so that whole trials fit
    cpw = params.train.cpus_per_worker
    params = with_updates(params, {"train.cpus_per_worker": cpw - 0.01 if cpw >= 1 else cpw})
    name = f"trial-{tune.get_context().get_trial_id()}-{uuid.uuid4().hex[:6]}"
    trainer = build_trainer(params, Path(config["prepared_dir"]), Path(config["storage_path"]), name,
                            callbacks=[TuneReportCallback()])
    trainer.fit()


@dataclass
class TuneOutcome:
    best_params: Params
    best_config: dict[str, Any]
    best_metric: float
    table_path: Path
    trials: list[dict[str, Any]]
    total_iterations: int


def run_tune(params: Params, prepared_dir: Path, out_dir: Path, name: str | None = None,
             early_stopping: bool = True) -> TuneOutcome:
    """Search, return the best config as validated Params; ``early_stopping=False`` runs every trial
    to the full budget (FIFO), the comparison ASHA is measured against."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    init_ray(params.train)
    storage = Path(params.train.storage_path).resolve()
    probe = trial_params(params, {})
    max_t = max(1, math.ceil(probe.train.steps / probe.train.val_every))  # reports per trial
    concurrent = max_concurrent_trials(params.train, ray.cluster_resources().get("CPU", 1))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                              grace_period=min(params.tune.grace_period, max_t),
                              reduction_factor=params.tune.reduction_factor) if early_stopping else FIFOScheduler()
    space = {**search_space(params.tune), "base_params": params.model_dump(mode="json"),
             "prepared_dir": str(Path(prepared_dir).resolve()), "storage_path": str(storage)}
    name = name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    grid = any(d.values is not None for d in params.tune.search_space.values())
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": 0.01}),
        param_space=space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=scheduler,
                                    # seeded; its own cap (TuneConfig's is ignored with a SearchGenerator)
                                    search_alg=BasicVariantGenerator(random_state=params.train.seed,
                                                                     max_concurrent=concurrent),
                                    num_samples=1 if grid else params.tune.num_samples),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    log.info("Ray Tune: %s, ASHA max_t=%d reports, %d concurrent trial(s)", name, max_t, concurrent)
    results = tuner.fit()
    keys = list(params.tune.search_space)
    trials = []
    for res in results:
        if res.metrics is None:
            continue
        trials.append({
            "trial_id": res.metrics.get("trial_id"),
            **{k: res.config.get(k) for k in keys},
            METRIC: res.metrics.get(METRIC),
            "training_iteration": res.metrics.get("training_iteration"),
            "step": res.metrics.get("step"),
            "stopped_early": (res.metrics.get("training_iteration") or 0) < max_t,
            "error": str(res.error) if res.error else None,
        })
    ok = [t for t in trials if t[METRIC] is not None and math.isfinite(t[METRIC]) and t["error"] is None]
    if not ok:
        raise MetagenError(f"Ray Tune {name}: no trial reported a finite {METRIC}")
    best = min(ok, key=lambda t: t[METRIC])
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "tune_results.json"
    write_text_atomic(table, json.dumps({"name": name, "max_t": max_t, "trials": trials, "best": best}, indent=2) + "\n")
    _write_csv(out_dir / "tune_results.csv", trials)
    best_config = {k: best[k] for k in keys}
    return TuneOutcome(
        best_params=with_updates(params, best_config), best_config=best_config, best_metric=best[METRIC],
        table_path=table, trials=trials, total_iterations=sum(t["training_iteration"] or 0 for t in trials),
    )


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())
