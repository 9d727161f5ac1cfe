"""The gate's paired bootstrap of pooled FIDs: ours (the form :func:`fid_units` picks: per-(repeat,
class) moments for narrow features, sample space for wide ones such as the 2048-d Inception pool;
every resampling of a model at once, models on threads) vs what a user would write instead (pool the resampled
classes' features and call pytorch-fid's ``calculate_frechet_distance`` per resampling, model and
repeat), same units, same resamplings, same run. The reference is timed on ``--reference``
resamplings and its cost per resampling scaled to ``--samples``; their FIDs are compared on the
resamplings both computed. Prints one JSON document.

    python benchmarks/bootstrap.py [--samples 1000] [--reference 20] [--models 7] [--dims 128]
    python benchmarks/bootstrap.py --dims 2048 --classes 20 --samples 1000 --reference 1 --models 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--reference", type=int, default=20)
    ap.add_argument("--models", type=int, default=7)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dims", type=int, default=128)
    args = ap.parse_args()
    from pytorch_fid.fid_score import calculate_frechet_distance

    from components.evaluation.bootstrap import bootstrap_fids, fid_units

    rng = np.random.default_rng(0)

    def units(n: int, shift: float) -> list[list[np.ndarray]]:
        return [[rng.normal(shift, 1, (n, args.dims)) for _ in range(args.classes)] for _ in range(args.repeats)]

    real_units = units(15 if args.dims < 512 else 9, 0.0)  # wide: the faces benchmark's 9 held-out and 10 samples
    model_units = {m: units(32 if args.dims < 512 else 10, 0.05 * m) for m in range(args.models)}
    real, models = fid_units(real_units), {m: fid_units(u) for m, u in model_units.items()}

    start = time.perf_counter()
    ours = bootstrap_fids(models, real, args.samples, seed=0)
    ours_s = time.perf_counter() - start

    # the same resamplings (bootstrap_fids draws classes then repeats from this seed), pooled by hand
    draw = np.random.default_rng(0)
    class_draws = draw.integers(0, args.classes, (args.samples, args.classes))
    repeat_draws = draw.integers(0, args.repeats, (args.samples, args.repeats))
    start = time.perf_counter()
    ref = {m: np.empty(args.reference) for m in models}
    for b in range(args.reference):
        for m, mu in model_units.items():
            per_repeat = []
            for r in range(args.repeats):
                fake = np.concatenate([mu[r][c] for c in class_draws[b]])
                held = np.concatenate([real_units[r][c] for c in class_draws[b]])
                per_repeat.append(calculate_frechet_distance(fake.mean(0), np.cov(fake, rowvar=False),
                                                             held.mean(0), np.cov(held, rowvar=False)))
            ref[m][b] = np.mean([per_repeat[r] for r in repeat_draws[b]])
    ref_s = (time.perf_counter() - start) / args.reference * args.samples
    diff = max(float(np.max(np.abs(ours[m][: args.reference] - ref[m]) / np.abs(ref[m]))) for m in models)
    print(json.dumps({
        "what": f"paired bootstrap of pooled FIDs: {args.models} models x {args.repeats} repeats x {args.samples} "
                f"resamplings of {args.classes} classes, {args.dims}-d features ({type(real).__name__.lower()} form)",
        "ours_s": round(ours_s, 2),
        "pytorch_fid_per_resampling_s_scaled": round(ref_s, 1),
        "speedup": round(ref_s / ours_s, 1),
        "max_relative_difference": diff,
        "reference_resamplings_timed": args.reference,
    }, indent=1))


if __name__ == "__main__":
    main()
