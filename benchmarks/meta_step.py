"""Meta-step throughput: the batched / vmap / per-task loop implementations, and `higher`.

Three settings, same tasks and thread count within each:
* ``default``: params.yaml as it is (the set-conditioned VAE adapting its context, CAVIA): the
  batched path against the per-task loop (learn2learn's and higher's recipe) and vmap;
* ``omniglot``: configs/omniglot.yaml (the same, with the decoder's attention over the supports and
  2 inner steps): the model the Omniglot results come from;
* ``whole_network``: the plain VAE adapting every weight (inner lr 0.1), where `higher` (if
  installed) is the anchor a user would pick instead.
Each configuration runs in its own process so that its peak memory is its own (RSS on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU). Prints one JSON document.

    python benchmarks/meta_step.py [--batch 4] [--steps 5] [--threads 2] [--device cuda]
                                   [--settings default] [--algos maml,fomaml]
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

SETTINGS = {
    "default": {"maml": ["batched", "vmap", "loop"], "fomaml": ["batched", "vmap", "loop"],
                "metasgd": ["batched", "vmap", "loop"]},
    "omniglot": {"maml": ["batched", "vmap", "loop"], "fomaml": ["batched", "vmap", "loop"],
                 "metasgd": ["batched", "vmap", "loop"]},
    "whole_network": {"maml": ["vmap", "loop", "higher"], "fomaml": ["vmap", "loop", "higher"],
                      "reptile": ["vmap", "loop"], "metasgd": ["vmap", "loop"]},
}
# the whole-network VAE: `higher`'s recipe (the anchor) has no notion of a set encoder's context
WHOLE_NETWORK = ["model.context_dim=0", "meta.adapt_scope=all", "meta.inner_lr=0.1"]
OVERLAY = {"omniglot": ROOT / "configs" / "omniglot.yaml"}  # on params.yaml


def _setup(setting: str, algo: str, batch: int, device: str):  # noqa: ANN202
    import torch

    from components.meta.algorithms import key_shape
    from components.meta.learner import algo_config
    from components.meta.tasks import TaskBatch
    from components.models.vae import VAEConfig, build_vae, param_dict
    from components.params import load_params

    extra = WHOLE_NETWORK if setting == "whole_network" else []
    params = load_params(ROOT / "params.yaml", [f"meta.algorithm={algo}", f"meta.meta_batch_size={batch}", *extra],
                         overlay=OVERLAY.get(setting))
    cfg = VAEConfig.from_params(params.model, 1, 28)
    model = build_vae(cfg, 0).to(device)
    meta = param_dict(model)
    m = params.meta
    g = torch.Generator().manual_seed(0)
    tasks = TaskBatch(
        torch.rand(batch, m.k_shot, 1, 28, 28, generator=g).round(),
        torch.rand(batch, m.k_query, 1, 28, 28, generator=g).round(),
        torch.randn(batch, m.inner_steps, m.k_shot + m.k_query, cfg.latent_dim, generator=g),
        torch.randn(batch, m.k_query, cfg.latent_dim, generator=g),
        tuple(range(batch)),
    ).to(device)
    acfg = algo_config(m, model)
    lrs = ({k: torch.full(key_shape(model, k), m.inner_lr, device=device) for k in acfg.keys}
           if algo == "metasgd" else None)
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


def child(setting: str, algo: str, impl: str, batch: int, steps: int, threads: int, device: str, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    from components.meta.algorithms import meta_gradients

    model, meta, lrs, tasks, acfg = _setup(setting, algo, batch, device)
    cuda = device.startswith("cuda")

    def run():  # noqa: ANN202
        if impl == "higher":
            return _higher_grads(model, meta, tasks, acfg)
        if impl == "loop":  # the per-task loop a user would write: the tests' reference
            from tests.components.meta.reference_loop import meta_gradients_loop

            return meta_gradients_loop(model, meta, lrs, tasks, acfg)
        return meta_gradients(model, meta, lrs, tasks, acfg, impl=impl)

    loss, grads = run()  # warm-up (and the gradients to compare)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    torch.save({k: v.cpu() for k, v in grads.items() if not k.startswith("lr::")}, out)
    if cuda:
        memory = {"peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    else:
        memory = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps({"tasks_per_s": batch * steps / elapsed, "s_per_meta_step": elapsed / steps, **memory,
                      "loss": float(loss)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of " + ", ".join(SETTINGS))
    ap.add_argument("--algos", default=None, help="comma-separated subset of the algorithms (default: all)")
    ap.add_argument("--child", nargs=4, metavar=("SETTING", "ALGO", "IMPL", "OUT"))
    args = ap.parse_args()
    if args.child:
        setting, algo, impl, out = args.child
        child(setting, algo, impl, args.batch, args.steps, args.threads, args.device, out)
        return
    import torch

    try:
        import higher  # noqa: F401

        have_higher = True
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        have_higher = False
    results: dict = {"batch_tasks": args.batch, "steps": args.steps, "threads": args.threads,
                     "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                     "torch": torch.__version__, "settings": {},
                     "learn2learn": "not installed: learn2learn 0.2.0 does not build on Python 3.11 (pip wheel build fails)"}
    if not have_higher:
        results["higher"] = "not installed (pip install higher)"
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings.split(","):
            results["settings"][setting] = {}
            for algo, impls in SETTINGS[setting].items():
                if args.algos and algo not in args.algos.split(","):
                    continue
                row: dict = {}
                for impl in impls:
                    if impl == "higher" and not have_higher:
                        continue
                    out = f"{tmp}/{setting}-{algo}-{impl}.pt"
                    cmd = [sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps),
                           "--threads", str(args.threads), "--device", args.device, "--child", setting, algo, impl, out]
                    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if res.returncode != 0:
                        row[impl] = {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
                        continue
                    row[impl] = json.loads(res.stdout.strip().splitlines()[-1])
                ref = torch.load(f"{tmp}/{setting}-{algo}-loop.pt", weights_only=True)
                for impl in row:
                    if "error" in row[impl] or impl == "loop":
                        continue
                    other = torch.load(f"{tmp}/{setting}-{algo}-{impl}.pt", weights_only=True)
                    # torch's max propagates NaN (Python's max() would skip it after a first 0.0)
                    row[impl]["max_abs_grad_diff_vs_loop"] = float(torch.stack([(other[k] - ref[k]).abs().max() for k in ref]).max())
                    row[impl]["grad_max_abs"] = float(torch.stack([ref[k].abs().max() for k in ref]).max())
                    row[impl]["tasks_per_s_ratio_vs_loop"] = round(row[impl]["tasks_per_s"] / row["loop"]["tasks_per_s"], 3)
                    mem = "peak_cuda_mb" if "peak_cuda_mb" in row[impl] else "peak_rss_mb"
                    row[impl]["memory_ratio_vs_loop"] = round(row[impl][mem] / row["loop"][mem], 3)
                results["settings"][setting][algo] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
