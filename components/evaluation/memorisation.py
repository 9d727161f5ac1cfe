"""Sample metrics that copying cannot win: precision/recall/density/coverage and the copy rate.

* PRDC (Kynkaanniemi et al. 2019; Naeem et al. 2020) from the ``prdc`` package, pooled over the
  test classes, generated features against the held-out real images' features, on sets of equal
  size (:func:`balanced_prdc`) as both papers measure them.
* ``copy_rate``: the fraction of generated images that look like one of their class's K supports
  more than almost every held-out real image of that class does. The likeness of two images is
  their normalised cross-correlation after a 3 x 3 blur, the best over shifts of the support by up
  to ``max_shift`` pixels: a support moved by a pixel or two, or with some pixels flipped or noise
  added, is still a copy (in the extractor's feature space a 1-pixel shift went uncounted 22% of
  the time and 2% flipped pixels 97%). The threshold of class ``c`` is the ``100 - percentile``-th
  percentile of its held-out real images' likeness to the supports; held-out real images scored
  as if generated therefore copy at about ``percentile`` % (5% by default) and replaying the
  supports copies at rate 1.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
import torch.nn.functional as F
from prdc import compute_prdc
from torch import Tensor


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


def _normalised(images: Tensor) -> Tensor:
    """Blurred (3 x 3 box), flattened, zero-mean, unit-norm rows."""
    x = F.avg_pool2d(images.to(torch.float64), 3, stride=1, padding=1, count_include_pad=False).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def likeness(images: Tensor, supports: Tensor, max_shift: int) -> np.ndarray:
    """Each image's best normalised cross-correlation with a support shifted by up to
    ``max_shift`` pixels each way (edges replicated): 1 for an exact or shifted copy."""
    h, w = supports.shape[-2:]
    padded = F.pad(supports.to(torch.float64), (max_shift,) * 4, mode="replicate")
    x = _normalised(images)
    best = torch.full((len(images),), -1.0, dtype=torch.float64)
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            shifted = _normalised(padded[..., dy : dy + h, dx : dx + w])
            best = torch.maximum(best, (x @ shifted.T).max(1).values)
    return best.numpy()


def copy_counts(fake: list[Tensor], supports: list[Tensor], real: list[Tensor], percentile: float,
                max_shift: int) -> np.ndarray:
    """Per class [C, 2]: how many generated images copy a support, of how many (each class's
    generated images, its supports, its held-out real images: (n, C, H, W) in [0, 1])."""
    out = []
    for f, s, r in zip(fake, supports, real, strict=True):
        threshold = float(np.percentile(likeness(r, s, max_shift), 100.0 - percentile))
        out.append((int((likeness(f, s, max_shift) >= threshold).sum()), len(f)))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def copy_rate(fake: list[Tensor], supports: list[Tensor], real: list[Tensor], percentile: float,
              max_shift: int) -> float:
    """Pooled over classes (see :func:`copy_counts`)."""
    counts = copy_counts(fake, supports, real, percentile, max_shift)
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
