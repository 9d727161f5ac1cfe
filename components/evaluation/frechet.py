"""Fréchet distance and KID on feature arrays: activations -> statistics -> distance.

``frechet_distance`` avoids ``scipy.linalg.sqrtm``: with ``S1 = U diag(l) U^T``,
``tr sqrt(S1 S2) = sum sqrt(eig(A S2 A))`` where ``A = S1^(1/2)`` is symmetric, so two symmetric
eigendecompositions replace the Schur-based matrix square root, and the result is real by
construction (tiny negative eigenvalues from rounding are clipped to zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.atomic import atomic_file
from components.errors import MetagenError


@dataclass(frozen=True)
class Statistics:
    mu: np.ndarray
    sigma: np.ndarray
    n: int


def _check_features(features: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise MetagenError(f"{what}: expected a (n >= 2, dims) feature array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MetagenError(f"{what}: features contain NaN or inf")
    return x


def statistics(features: np.ndarray, what: str = "features") -> Statistics:
    x = _check_features(features, what)
    return Statistics(mu=x.mean(0), sigma=np.cov(x, rowvar=False), n=x.shape[0])


def _sym_sqrt(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``, stable for singular covariances."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise MetagenError(f"FID inputs disagree in shape: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    a = _sym_sqrt(s1)
    inner = a @ s2 @ a
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = statistics(a, "generated features"), statistics(b, "real features")
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


def kid(a: np.ndarray, b: np.ndarray, n_subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``.

    Averaged over ``n_subsets`` random subsets of size ``min(subset_size, len(a), len(b))``;
    returns (mean, std).
    """
    x, y = _check_features(a, "generated features"), _check_features(b, "real features")
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        kxx = (xs @ xs.T / d + 1) ** 3
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        off = m * (m - 1)
        mmd = (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def save_statistics(path: Path, stats: Statistics) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=stats.mu, sigma=stats.sigma, n=np.array(stats.n))


def load_statistics(path: Path) -> Statistics:
    with np.load(path, allow_pickle=False) as data:
        return Statistics(mu=data["mu"], sigma=data["sigma"], n=int(data["n"]))


def cached_statistics(cache_dir: Path, key: str, features_fn) -> Statistics:  # noqa: ANN001
    """Statistics cached as ``<cache_dir>/<key>.npz`` (key: data version, split, extractor hash)."""
    path = Path(cache_dir) / f"{key}.npz"
    if path.is_file():
        return load_statistics(path)
    stats = statistics(features_fn())
    save_statistics(path, stats)
    return stats
