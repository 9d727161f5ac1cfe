"""Sample metrics that copying cannot win: precision/recall/density/coverage and the copy rate.

* PRDC (Kynkaanniemi et al. 2019; Naeem et al. 2020) from the ``prdc`` package, pooled over the
  test classes, generated features against the held-out real images' features, on sets of equal
  size (:func:`balanced_prdc`) as both papers measure them.
* ``copy_rate``: the fraction of generated images that lie closer to one of their class's K
  supports than almost every held-out real image of that class does. The threshold of class ``c``
  is the ``percentile``-th percentile of the distances from the class's held-out real images to
  their nearest support; held-out real images scored as if generated therefore copy at about that
  rate (5% by default) and replaying the supports copies at rate 1.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from prdc import compute_prdc


def prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` (feature rows)."""
    k = min(k, len(real) - 1, len(fake) - 1)
    if k < 1:
        raise ValueError(f"PRDC needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = compute_prdc(real_features=np.asarray(real, dtype=np.float64),
                           fake_features=np.asarray(fake, dtype=np.float64), nearest_k=k)
    return {name: float(out[name]) for name in ("precision", "recall", "density", "coverage")}


def balanced_prdc(real: list[np.ndarray], fake: list[np.ndarray], k: int) -> dict[str, float]:
    """PRDC of per-class sets with as many generated as real rows in each class.

    The k-NN radii of a set shrink as it grows: with 64 generated images per class against 15
    held-out ones (Omniglot), recall (the generated set's radii) read 0.01-0.06 for every model
    where equal sets read 0.41-0.46 (README). So the larger side of each class is cut into
    disjoint groups of the smaller side's size, in order, and PRDC is averaged over the groups
    (as many as the class with the fewest allows); every row of the smaller side is in each group.
    """
    sizes = [min(len(r), len(f)) for r, f in zip(real, fake, strict=True)]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"PRDC needs real and generated images in every class, got sizes {sizes}")
    groups = min(max(len(r), len(f)) // n for r, f, n in zip(real, fake, sizes, strict=True))
    results = []
    for i in range(groups):
        part = [(r[i * n : (i + 1) * n] if len(r) > n else r, f[i * n : (i + 1) * n] if len(f) > n else f)
                for r, f, n in zip(real, fake, sizes, strict=True)]
        results.append(prdc(np.concatenate([r for r, _ in part]), np.concatenate([f for _, f in part]), k))
    return {key: float(np.mean([res[key] for res in results])) for key in results[0]}


def nearest_distance(points: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``points`` to its nearest row of ``anchors``."""
    d2 = (points**2).sum(1)[:, None] + (anchors**2).sum(1)[None, :] - 2.0 * points @ anchors.T
    return np.sqrt(np.clip(d2, 0.0, None)).min(1)


def copy_threshold(real: np.ndarray, supports: np.ndarray, percentile: float) -> float:
    return float(np.percentile(nearest_distance(real, supports), percentile))


def copy_counts(fake: list[np.ndarray], supports: list[np.ndarray], real: list[np.ndarray],
                percentile: float) -> np.ndarray:
    """Per class [C, 2]: how many generated images copy, of how many (features of each class's
    generated images, its supports, its held-out real images)."""
    out = []
    for f, s, r in zip(fake, supports, real, strict=True):
        tau = copy_threshold(r, s, percentile)
        out.append((int((nearest_distance(f, s) <= tau).sum()), len(f)))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def copy_rate(fake: list[np.ndarray], supports: list[np.ndarray], real: list[np.ndarray], percentile: float) -> float:
    """Pooled over classes: per class, generated features, support features, held-out real features."""
    counts = copy_counts(fake, supports, real, percentile)
    return float(counts[:, 0].sum() / max(int(counts[:, 1].sum()), 1))


def copy_rate_bound(counts: np.ndarray, confidence: float, samples: int, seed: int) -> float:
    """The pooled copy rate's one-sided upper bound at ``confidence``: a bootstrap over the classes
    (``counts`` [C, 2] as :func:`copy_counts` gives), whose copy rates differ far more than the
    images of one class do. A setting chosen with its point estimate just under a line lands on
    either side of it on other classes; one chosen with this bound stays under it."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 2)
    draws = np.random.default_rng(seed).integers(0, len(counts), (samples, len(counts)))
    rates = counts[draws, 0].sum(1) / np.maximum(counts[draws, 1].sum(1), 1)
    return float(np.quantile(rates, confidence))
