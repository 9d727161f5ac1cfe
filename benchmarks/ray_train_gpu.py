"""The CUDA path of Ray Train: the same meta-training with ``train.use_gpu=true`` and on the CPU.

Runs ``components.training.train_distributed`` (what ``metagen train`` calls inside its Prefect
flow) twice on one local Ray, one worker each: on the GPU (``ScalingConfig(use_gpu=True)``,
``ray.train.torch.get_device()``) and on the CPU with ``--cpu-threads`` threads, both from
params.yaml and the prepared data in ``--prepared``. Prints one JSON document: steady steps/s
(measured inside the loop), wall time, the final validation -ELBO and the device each worker
used; and, in this process without Ray, where a step's time goes on each device (drawing the
tasks, the meta-step) and the meta-step at larger meta-batches.

    python benchmarks/ray_train_gpu.py [--steps 300] [--cpu-threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cpu-threads", type=int, default=2)
    ap.add_argument("--prepared", default=str(ROOT / "prepared"))
    args = ap.parse_args()
    import ray
    import torch

    from components.params import load_params
    from components.training import train_distributed, worker_summaries

    tmp = Path(tempfile.mkdtemp(prefix="metagen-gpu-"))
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), log_to_driver=False,
             include_dashboard=False)
    rows = {}
    for label, gpu in (("gpu", True), ("cpu", False)):
        params = load_params(ROOT / "params.yaml", [
            f"train.steps={args.steps}", f"train.use_gpu={str(gpu).lower()}", "train.num_workers=1",
            f"train.cpus_per_worker={1 if gpu else args.cpu_threads}", f"train.num_threads={args.cpu_threads}",
            f"train.storage_path={tmp / 'ray'}"])
        start = time.perf_counter()
        result = train_distributed(params, Path(args.prepared), tmp / label, name=f"metagen-{label}")
        wall = time.perf_counter() - start
        last = result.history[-1]
        rows[label] = {"steps": result.step, "steps_per_s": round(last["steps_per_s"], 2), "fit_wall_s": round(wall, 1),
                       "final_val_loss": round(result.final_val_loss or float("nan"), 4),
                       "worker_device": [w["device"] for w in worker_summaries(tmp / "ray" / f"metagen-{label}")]}
    rows["gpu_vs_cpu_steps_per_s_ratio"] = round(rows["gpu"]["steps_per_s"] / rows["cpu"]["steps_per_s"], 2)
    ray.shutdown()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ray": ray.__version__,
                      "meta_batch": params.meta.meta_batch_size, "algorithm": params.meta.algorithm,
                      "adapt_scope": params.meta.adapt_scope, "runs": rows,
                      "in_process": _phases(Path(args.prepared), args.cpu_threads)}, indent=2))


def _phases(prepared: Path, threads: int) -> dict:
    """Seconds per step spent drawing tasks and in the meta-step, per device and meta-batch size."""
    import torch

    from components.data.prepare import load_split
    from components.meta.trainer import build_learner, make_sampler, vae_config
    from components.params import load_params

    torch.set_num_threads(threads)
    out = {}
    for device in ("cuda", "cpu"):
        for batch in (4, 32):
            params = load_params(ROOT / "params.yaml", [f"meta.meta_batch_size={batch}"])
            split = load_split(prepared, "train")
            learner = build_learner(params.meta, vae_config(params.model, split), 0)
            learner.model.to(device)
            sampler = make_sampler(params, split, 0)
            draw = step = 0.0
            for i in range(25):
                t0 = time.perf_counter()
                tasks = sampler.sample(i, batch).to(device)
                t1 = time.perf_counter()
                learner.meta_step(tasks)  # ends with float(loss): synchronised
                t2 = time.perf_counter()
                if i >= 5:  # warm-up excluded
                    draw, step = draw + t1 - t0, step + t2 - t1
            out[f"{device}_batch{batch}"] = {"draw_s_per_step": round(draw / 20, 4), "meta_step_s": round(step / 20, 4),
                                             "tasks_per_s": round(20 * batch / (draw + step), 1)}
    return out


if __name__ == "__main__":
    main()
