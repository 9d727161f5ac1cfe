"""Meta-step throughput: torch.func vmap path vs plain per-task loop vs `higher` (if installed).

Same model (params.yaml's VAE on 28x28x1), same tasks, same thread count. Each configuration runs
in its own process so that its peak RSS is its own. Prints one JSON document.

    python benchmarks/meta_step.py [--batch 4] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMPLS = {"maml": ["vmap", "loop", "higher"], "fomaml": ["vmap", "loop", "higher"], "reptile": ["vmap", "loop"],
         "metasgd": ["vmap", "loop"]}


def _setup(algo: str, batch: int):  # noqa: ANN202
    import torch

    from components.meta.algorithms import AlgoConfig
    from components.meta.tasks import TaskBatch
    from components.models.vae import VAEConfig, build_vae, param_dict
    from components.params import load_params

    # the whole-network VAE: `higher`'s recipe (the anchor) has no notion of a set encoder's context
    params = load_params(ROOT / "params.yaml", [f"meta.algorithm={algo}", f"meta.meta_batch_size={batch}",
                                                "model.context_dim=0", "meta.adapt_scope=all", "meta.inner_lr=0.1"])
    cfg = VAEConfig.from_params(params.model, 1, 28)
    model = build_vae(cfg, 0)
    meta = param_dict(model)
    m = params.meta
    g = torch.Generator().manual_seed(0)
    tasks = TaskBatch(
        torch.rand(batch, m.k_shot, 1, 28, 28, generator=g).round(),
        torch.rand(batch, m.k_query, 1, 28, 28, generator=g).round(),
        torch.randn(batch, m.inner_steps, m.k_shot + m.k_query, cfg.latent_dim, generator=g),
        torch.randn(batch, m.k_query, cfg.latent_dim, generator=g),
        tuple(range(batch)),
    )
    acfg = AlgoConfig.from_params(m, model)
    lrs = {k: torch.full_like(meta[k], m.inner_lr) for k in acfg.keys} if algo == "metasgd" else None
    return model, meta, lrs, tasks, acfg


def _higher_grads(model, meta, tasks, acfg):  # noqa: ANN001, ANN202
    """The MAML a user of `higher` would write: innerloop_ctx + differentiable SGD, per task."""
    import higher
    import torch

    for k, p in model.named_parameters():
        p.data.copy_(meta[k])
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=acfg.inner_lr)
    losses = []
    npix = model.num_pixels
    for t in range(len(tasks)):
        with higher.innerloop_ctx(model, opt, track_higher_grads=acfg.algorithm == "maml",
                                  copy_initial_weights=False) as (fmodel, diffopt):
            for s in range(acfg.inner_steps):
                x = tasks.support[t]
                diffopt.step(fmodel(x, tasks.eps_inner[t, s, : len(x)]).mean() / npix)
            loss = fmodel(tasks.query[t], tasks.eps_query[t]).mean() / npix / len(tasks)
            if acfg.algorithm == "maml":
                loss.backward()
            else:
                fast = list(fmodel.parameters(time=-1))
                gs = torch.autograd.grad(loss, fast)
                for p, gr in zip(model.parameters(), gs, strict=True):
                    p.grad = gr if p.grad is None else p.grad + gr
            losses.append(float(loss) * len(tasks))
    return torch.tensor(losses).mean(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def child(algo: str, impl: str, batch: int, steps: int, threads: int, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    from components.meta.algorithms import meta_gradients

    model, meta, lrs, tasks, acfg = _setup(algo, batch)

    def run():  # noqa: ANN202
        if impl == "higher":
            return _higher_grads(model, meta, tasks, acfg)
        return meta_gradients(model, meta, lrs, tasks, acfg, vectorize=impl == "vmap")

    loss, grads = run()  # warm-up (and the gradients to compare)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    elapsed = time.perf_counter() - start
    torch.save({k: v for k, v in grads.items() if not k.startswith("lr::")}, out)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tasks_per_s": batch * steps / elapsed, "s_per_meta_step": elapsed / steps,
                      "peak_rss_mb": round(peak_mb, 1), "loss": float(loss)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--child", nargs=3, metavar=("ALGO", "IMPL", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch, args.steps, args.threads, args.child[2])
        return
    import torch

    try:
        import higher  # noqa: F401

        have_higher = True
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        have_higher = False
    results: dict = {"batch_tasks": args.batch, "steps": args.steps, "threads": args.threads,
                     "torch": torch.__version__, "algorithms": {},
                     "learn2learn": "not installed: learn2learn 0.2.0 does not build on Python 3.11 (pip wheel build fails)"}
    if not have_higher:
        results["higher"] = "not installed (pip install higher)"
    with tempfile.TemporaryDirectory() as tmp:
        for algo, impls in IMPLS.items():
            row: dict = {}
            for impl in impls:
                if impl == "higher" and not have_higher:
                    continue
                out = f"{tmp}/{algo}-{impl}.pt"
                cmd = [sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps),
                       "--threads", str(args.threads), "--child", algo, impl, out]
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    row[impl] = {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
                    continue
                row[impl] = json.loads(res.stdout.strip().splitlines()[-1])
            ref = torch.load(f"{tmp}/{algo}-loop.pt", weights_only=True)
            for impl in row:
                if "error" in row[impl] or impl == "loop":
                    continue
                other = torch.load(f"{tmp}/{algo}-{impl}.pt", weights_only=True)
                row[impl]["max_abs_grad_diff_vs_loop"] = max(float((other[k] - ref[k]).abs().max()) for k in ref)
                row[impl]["speedup_vs_loop"] = round(row[impl]["tasks_per_s"] / row["loop"]["tasks_per_s"], 3)
            results["algorithms"][algo] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
