"""Disjoint meta-train / meta-val / meta-test class splits by a seeded numpy Generator."""

from __future__ import annotations

import numpy as np

from components.errors import DataError
from components.params import SplitParams

SPLITS = ("train", "val", "test")


def split_classes(names: list[str], params: SplitParams) -> dict[str, list[str]]:
    names = sorted(names)
    if params.classes is not None:
        available = set(names)
        out: dict[str, list[str]] = {}
        for split in SPLITS:
            listed = params.classes[split]  # type: ignore[index]
            missing = [c for c in listed if c not in available]
            if missing:
                raise DataError(
                    f"data.split.classes.{split}: {missing} not among the kept classes "
                    f"({len(names)} classes: {names[:8]}{'...' if len(names) > 8 else ''})"
                )
            out[split] = list(listed)
    else:
        rng = np.random.default_rng(params.seed)
        order = [names[i] for i in rng.permutation(len(names))]
        n = len(order)
        counts = [int(round(f * n)) for f in params.fractions]
        # every split with a positive fraction gets at least one class, the rest goes to train
        for i, f in enumerate(params.fractions):
            if f > 0 and counts[i] == 0:
                counts[i] = 1
        counts[0] = n - counts[1] - counts[2]
        if counts[0] < 1:
            raise DataError(
                f"only {n} classes: too few to split into train/val/test with fractions {list(params.fractions)}"
            )
        out = {
            "train": sorted(order[: counts[0]]),
            "val": sorted(order[counts[0] : counts[0] + counts[1]]),
            "test": sorted(order[counts[0] + counts[1] :]),
        }
    for split in SPLITS:
        if not out[split]:
            raise DataError(f"split {split!r} has no classes ({len(names)} classes kept); adjust data.split")
    return out
