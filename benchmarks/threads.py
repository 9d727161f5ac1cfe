"""Two trainings side by side on this machine: torch threads per process as `metagen run` sets them
beside the meta-training (one each on 2 CPUs) against torch's default (every core per process).

Each process trains the default VAE (width 32, 28x28, batch 64, Adam) for ``--seconds`` and reports
its step time; alone first, then two at once. Prints JSON.

    python benchmarks/threads.py --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time, torch
from components.models.vae import VAEConfig, ConvVAE
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = ConvVAE(VAEConfig(1, 28, 16, 32, "bernoulli", 8, 0))
x = torch.rand(64, 1, 28, 28)
opt = torch.optim.Adam(model.parameters(), 1e-3)
def step():
    loss = model(x, torch.randn(64, 16)).mean()
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
start, n = time.perf_counter(), 0
while time.perf_counter() - start < seconds:
    step(); n += 1
print(json.dumps({"threads": threads, "ms_per_step": 1000 * (time.perf_counter() - start) / n}))
"""


def run(threads: list[int], seconds: float) -> list[dict]:
    """One process per entry of ``threads``, all at once."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(t), str(seconds)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
             for t in threads]
    return [json.loads(p.communicate()[0]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    started = time.time()
    alone = {t: run([t], args.seconds)[0]["ms_per_step"] for t in sorted({1, cpus})}
    default_pair = run([1, cpus], args.seconds)   # a 1-thread training beside a process at torch's default
    metagen_pair = run([1, max(1, cpus - 1)], args.seconds)  # what `metagen run` sets: the cores the training leaves
    out = {
        "cpus": cpus, "seconds_each": args.seconds,
        "alone_ms_per_step": alone,
        "beside_default": {"training_1_thread": default_pair[0]["ms_per_step"],
                           f"other_{cpus}_threads": default_pair[1]["ms_per_step"]},
        "beside_metagen": {"training_1_thread": metagen_pair[0]["ms_per_step"],
                           f"other_{max(1, cpus - 1)}_threads": metagen_pair[1]["ms_per_step"]},
    }
    pair_rate = lambda pair: sum(1000 / p["ms_per_step"] for p in pair)  # noqa: E731 - steps/s of both together
    out["steps_per_s_together"] = {"default": pair_rate(default_pair), "metagen": pair_rate(metagen_pair)}
    out["ratio_metagen_vs_default"] = out["steps_per_s_together"]["metagen"] / out["steps_per_s_together"]["default"]
    out["wall_s"] = time.time() - started
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
