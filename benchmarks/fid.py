"""Fréchet distance at 2048 dims: ours (symmetric eigendecompositions) vs pytorch-fid's
``calculate_frechet_distance`` (scipy ``sqrtm``), same statistics, same run; and the domain
extractor's feature throughput; and a training step of the domain CNN (the extractor at width 64,
the augmentation classifiers at width 32) in its channels-last layout vs PyTorch's default NCHW,
same weights, same batches, one thread. Prints one JSON document.

    python benchmarks/fid.py [--dims 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), float(value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch
    from pytorch_fid.fid_score import calculate_frechet_distance

    from components.evaluation.extractors import DomainCNN, DomainExtractor
    from components.evaluation.frechet import frechet_distance, statistics

    rng = np.random.default_rng(0)
    a = rng.normal(size=(args.samples, args.dims))
    b = rng.normal(size=(args.samples, args.dims)) * 1.05 + 0.1
    sa, sb = statistics(a), statistics(b)
    t_ours, v_ours = best_of(lambda: frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), args.repeats)
    t_ref, v_ref = best_of(lambda: calculate_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), args.repeats)

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ext = DomainExtractor(DomainCNN(1, 6).eval())
    images = torch.rand(2048, 1, 28, 28)
    ext.features(images[:256])
    start = time.perf_counter()
    ext.features(images)
    feat_s = time.perf_counter() - start
    threads = torch.get_num_threads()
    layout = {f"width_{w}": classifier_step_ms(w, args.repeats) for w in (32, 64)}
    print(json.dumps({
        "frechet": {
            "dims": args.dims, "ours_s": round(t_ours, 4), "pytorch_fid_sqrtm_s": round(t_ref, 4),
            "speedup": round(t_ref / t_ours, 2), "ours_value": v_ours, "pytorch_fid_value": v_ref,
            "rel_diff": abs(v_ours - v_ref) / abs(v_ref),
        },
        "domain_extractor": {"images": len(images), "images_per_s": round(len(images) / feat_s, 1),
                             "threads": threads},
        "domain_cnn_train_step_ms": layout,
    }, indent=2))


def classifier_step_ms(width: int, repeats: int, steps: int = 20) -> dict[str, float]:
    """One Adam step of DomainCNN on 64 images of 28x28 (``train_classifier``'s batch), ms: ours
    (channels-last, as built) vs the same network moved back to NCHW."""
    import torch
    import torch.nn.functional as F

    from components.evaluation.extractors import DomainCNN

    torch.set_num_threads(1)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    out = {}
    for name, fmt in (("channels_last", torch.channels_last), ("nchw", torch.contiguous_format)):
        torch.manual_seed(0)
        net = DomainCNN(1, 10, width=width).to(memory_format=fmt)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)

        def run() -> float:
            for _ in range(steps):
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return float(loss.detach())

        run()  # warm-up
        seconds, _ = best_of(run, repeats)
        out[f"{name}_ms"] = round(1000 * seconds / steps, 2)
    out["speedup"] = round(out["nchw_ms"] / out["channels_last_ms"], 2)
    return out


if __name__ == "__main__":
    main()
