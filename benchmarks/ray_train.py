"""Ray Train overhead and ASHA's savings, in one run on this machine.

1. The same meta-steps in-process vs Ray Train with 1 worker vs 2 workers (1 thread each):
   steady-state steps/s measured inside the loop (start-up excluded) and start-up seconds.
2. Ray Tune over a fixed grid of outer learning rates, with ASHA vs every trial to the full
   budget (FIFO): meta-steps spent and best validation metric found.

    python benchmarks/ray_train.py [--steps 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prepared", default=str(ROOT / "prepared"))
    args = ap.parse_args()
    import ray
    import torch

    from components.data.prepare import load_split
    from components.meta.trainer import build_learner, make_sampler, train_step, vae_config
    from components.params import load_params
    from components.training import train_distributed
    from components.tuning import run_tune

    prepared = Path(args.prepared)
    tmp = Path(tempfile.mkdtemp(prefix="metagen-bench-"))
    base = [f"train.steps={args.steps}", f"train.report_every={args.steps}", f"train.val_every={args.steps}",
            f"train.checkpoint_every={args.steps}", "train.num_threads=1", "train.val_tasks=2",
            f"train.storage_path={tmp / 'ray'}"]
    params = load_params(ROOT / "params.yaml", base)

    torch.set_num_threads(1)
    train = load_split(prepared, "train")
    learner = build_learner(params.meta, vae_config(params.model, train), params.train.seed)
    sampler = make_sampler(params, train, params.train.seed)
    train_step(learner, sampler.sample(0, params.meta.meta_batch_size))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        train_step(learner, sampler.sample(step, params.meta.meta_batch_size))
    inproc = args.steps / (time.perf_counter() - start)

    ray.init(address="local", num_cpus=os.cpu_count(), log_to_driver=False)
    rows = {"in_process": {"steps_per_s": round(inproc, 3), "startup_s": 0.0}}
    for workers in (1, 2):
        p = load_params(ROOT / "params.yaml", [*base, f"train.num_workers={workers}"])
        t0 = time.perf_counter()
        res = train_distributed(p, prepared, tmp / f"w{workers}")
        wall = time.perf_counter() - t0
        sps = res.history[-1]["steps_per_s"]
        rows[f"ray_{workers}_worker"] = {"steps_per_s": round(sps, 3), "fit_wall_s": round(wall, 1),
                                         "startup_s": round(wall - args.steps / sps, 1),
                                         "overhead_vs_in_process": round(inproc / sps - 1, 3)}

    grid = "tune.search_space={meta.outer_lr: {values: [0.01, 0.003, 0.001, 0.0001]}}"
    tune_rows = {}
    for label, early in (("asha", True), ("full_budget", False)):
        p = load_params(ROOT / "params.yaml", [*base, "tune.max_steps=24", "tune.val_every=4", "tune.grace_period=1",
                                              "tune.reduction_factor=2", grid])
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # Tune prints its own tables: keep stdout JSON only
            out = run_tune(p, prepared, tmp / label, early_stopping=early)
        tune_rows[label] = {"meta_steps_used": sum(t["step"] or 0 for t in out.trials),
                            "reports": out.total_iterations, "best_val_loss": round(out.best_metric, 2),
                            "best_config": out.best_config, "wall_s": round(time.perf_counter() - t0, 1)}
    ray.shutdown()
    print(json.dumps({"meta_batch": params.meta.meta_batch_size, "steps": args.steps, "train": rows,
                      "tune": tune_rows}, indent=2))


if __name__ == "__main__":
    main()
