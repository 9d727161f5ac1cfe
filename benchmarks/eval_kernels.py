"""The evaluation's per-class work, as the protocol runs it (one torch thread: one per Ray task):

* the IWAE NLL of 15 held-out images with 100 importance samples (1,500 decodes in one batch), in the
  channels-last layout it runs in against PyTorch's default (contiguous NCHW) layout;
* a fine-tuning step on the K=5 supports (`scratch`'s 200, the meta-model's and `pretrain`'s 20) with
  the fused Adam it runs against torch's CPU default (the per-tensor loop).

For the default model (params.yaml) and the Omniglot one (configs/omniglot.yaml: support attention).
Each pair is timed interleaved, ``--repeats`` times, medians reported, and the results compared.
Prints JSON.

    python benchmarks/eval_kernels.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.meta.adaptation import finetune  # noqa: E402
from components.models.vae import VAEConfig, build_vae, iwae_nll, param_dict, with_context  # noqa: E402
from components.params import load_params  # noqa: E402

CONFIGS = {"default": None, "omniglot": ROOT / "configs" / "omniglot.yaml"}  # overlays on params.yaml


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _pair(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[list[float], list[float], Any, Any]:
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        t, out_a = _timed(a)
        ta.append(t)
        t, out_b = _timed(b)
        tb.append(t)
    return ta, tb, out_a, out_b


def bench_config(name: str, repeats: int, finetune_steps: int) -> dict[str, Any]:
    params = load_params(ROOT / "params.yaml", overlay=CONFIGS[name])
    ev = params.eval
    cfg = VAEConfig.from_params(params.model, 1, 28)
    model = build_vae(cfg, 0).eval()
    g = torch.Generator().manual_seed(0)
    support = torch.rand(params.meta.k_shot, 1, 28, 28, generator=g).round()
    held = torch.rand(ev.nll_max_images, 1, 28, 28, generator=g).round()
    with torch.no_grad():
        start = with_context(model, param_dict(model), support)

    def nll(layout: str) -> Callable[[], torch.Tensor]:
        return lambda: iwae_nll(model, start, held, ev.nll_samples, torch.Generator().manual_seed(1),
                                tuple(ev.nll_proposal_scales), layout=layout)  # type: ignore[arg-type]

    ta, tb, cl, nchw = _pair(nll("channels_last"), nll("contiguous"), repeats)
    out: dict[str, Any] = {"nll": {
        "images": ev.nll_max_images, "samples": ev.nll_samples,
        "channels_last_s": statistics.median(ta), "contiguous_s": statistics.median(tb),
        "speedup": round(statistics.median(tb) / statistics.median(ta), 3),
        "max_abs_diff_nats": float((cl - nchw).abs().max()), "nll_nats": float(nchw.mean()),
    }}

    def tune(fused: bool) -> Callable[[], dict[str, torch.Tensor]]:
        return lambda: finetune(model, start, support, finetune_steps, 3e-4, torch.Generator().manual_seed(2),
                                fused=fused)

    ta, tb, fused, loop = _pair(tune(True), tune(False), repeats)
    out["finetune"] = {
        "steps": finetune_steps, "support": params.meta.k_shot,
        "fused_ms_per_step": 1000 * statistics.median(ta) / finetune_steps,
        "per_tensor_loop_ms_per_step": 1000 * statistics.median(tb) / finetune_steps,
        "speedup": round(statistics.median(tb) / statistics.median(ta), 3),
        "max_abs_param_diff": max(float((fused[k] - loop[k]).abs().max()) for k in loop),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--finetune-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
               "configs": {name: bench_config(name, args.repeats, args.finetune_steps) for name in CONFIGS}}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
