"""How sure a FID comparison is: a paired bootstrap over test classes and repeats.

The evaluation's FID of a model is the mean over repeats of the FID of all its samples (every test
class pooled) against all held-out real images. Its noise comes from which classes were drawn and
from each repeat's supports, so the bootstrap resamples exactly those units: the test classes with
replacement (the same draw for every model: the comparison is paired) and the repeats with
replacement, and recomputes each model's pooled FID on the resampled set, exactly, in one of two
forms (:func:`fid_units`):

* :class:`Moments`, in feature space: per-unit count, sum and sum of outer products, which add;
  each resampling's FID needs a d x d matrix square root (cheap for the 128-d domain features);
* :class:`Samples`, in sample space, for wide features (the 2048-d Inception pool) where fewer
  images than dimensions make every covariance low-rank: a resampling weights each image by its
  class's count, and with ``S = A A^T`` (``A = X^T diag(sqrt w) P / sqrt(n - 1)``, ``P`` the
  weighted centring projector) ``tr sqrt(S_m S_r)`` is the nuclear norm of ``A_m^T A_r``, an
  images x images matrix built from the Gram matrices ``X_m X_r^T`` computed once. The d x d moments
  of 2048-d features held 2 GB a model and took a 2048 x 2048 eigen-decomposition per resampling.

The difference of two models' FIDs then has an interval: the ``[1 - confidence, confidence]``
percentiles, whose upper end is a one-sided bound.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from components.errors import MetagenError

Units = Sequence[Sequence[np.ndarray]]  # [repeat][class] -> (n, d) features
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Moments:
    """Per (repeat, class) unit: ``n`` [R, C], ``s1`` [R, C, d] sums, ``s2`` [R, C, d, d] sums of x x^T."""

    n: np.ndarray
    s1: np.ndarray
    s2: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.s1.shape[-1])

    @classmethod
    def of(cls, units: Units, what: str = "features") -> Moments:
        _check_units(units, what)
        x = [[np.asarray(u, np.float64) for u in r] for r in units]
        return cls(np.array([[len(u) for u in r] for r in x], np.float64),
                   np.array([[u.sum(0) for u in r] for r in x]),
                   np.array([[u.T @ u for u in r] for r in x]))


@dataclass(frozen=True)
class Samples:
    """Per repeat: the images' features ``x`` [R] (N_r, d), each image's class ``labels`` [R] (N_r,)
    and the Gram matrices are formed when a comparison needs them."""

    x: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    classes: int

    @property
    def n(self) -> np.ndarray:  # [R, C] counts, as Moments.n
        return np.stack([np.bincount(lab, minlength=self.classes) for lab in self.labels]).astype(np.float64)

    @property
    def dim(self) -> int:
        return int(self.x[0].shape[1])

    @classmethod
    def of(cls, units: Units, what: str = "features") -> Samples:
        _check_units(units, what)
        return cls(tuple(np.concatenate([np.asarray(u, np.float64) for u in r]) for r in units),
                   tuple(np.concatenate([np.full(len(u), c) for c, u in enumerate(r)]) for r in units),
                   len(units[0]))


WIDE = 512  # features at least this wide are bootstrapped in sample space (:class:`Samples`)


def fid_units(units: Units, what: str = "features") -> Moments | Samples:
    """The exact bootstrap form for these features: sample space for wide ones, else moments."""
    _check_units(units, what)
    wide = np.asarray(units[0][0]).shape[-1] >= WIDE
    return Samples.of(units, what) if wide else Moments.of(units, what)


def _check_units(units: Units, what: str) -> None:
    if not units or not units[0]:
        raise MetagenError(f"{what}: no (repeat, class) units to bootstrap")
    if any(len(r) != len(units[0]) for r in units):
        raise MetagenError(f"{what}: every repeat must have the same classes")


def _sample_space_fids(models: Mapping[Hashable, Samples], real: Samples,
                       weights: np.ndarray) -> dict[Hashable, np.ndarray]:
    """:func:`_fids` in sample space (see the module docstring): FID [B, R]."""
    repeats = len(real.x)
    out = {name: np.empty((len(weights), repeats)) for name in models}

    def parts(g: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray]:
        """Weighted centred square root's factor (``D P``, rows with weight > 0), n, trace, mean-norm term."""
        keep = w > 0
        w = w[keep]
        n = float(w.sum())
        root = np.sqrt(w)
        g = g[np.ix_(keep, keep)]
        gw = g @ w
        trace = (float(w @ np.diag(g)) - float(w @ gw) / n) / (n - 1)
        return root, n, trace, keep

    with threadpool_limits(1), ThreadPoolExecutor(max_workers=min(len(models), os.cpu_count() or 1)) as pool:
        for r in range(repeats):
            xr = real.x[r]
            g_rr = xr @ xr.T

            def fid(m: Samples, r: int = r, xr: np.ndarray = xr, g_rr: np.ndarray = g_rr) -> np.ndarray:
                xm = m.x[r]
                g_mm, g_mr = xm @ xm.T, xm @ xr.T
                vals = np.empty(len(weights))
                for b, wc in enumerate(weights):
                    w_m, w_r = wc[m.labels[r]], wc[real.labels[r]]
                    rm, n_m, tr_m, km = parts(g_mm, w_m)
                    rr, n_r, tr_r, kr = parts(g_rr, w_r)
                    wm, wr = w_m[km], w_r[kr]
                    cross = g_mr[np.ix_(km, kr)]
                    mean_sq = (float(wm @ g_mm[np.ix_(km, km)] @ wm) / n_m**2
                               + float(wr @ g_rr[np.ix_(kr, kr)] @ wr) / n_r**2
                               - 2 * float(wm @ cross @ wr) / (n_m * n_r))
                    k = rm[:, None] * cross * rr[None, :]  # D_m G D_r, then both centrings
                    ku, kv = rm @ k, k @ rr
                    k = (k - np.outer(rm, ku) / n_m - np.outer(kv, rr) / n_r
                         + np.outer(rm, rr) * float(rm @ k @ rr) / (n_m * n_r))
                    nuclear = np.linalg.svd(k, compute_uv=False).sum() / np.sqrt((n_m - 1) * (n_r - 1))
                    vals[b] = mean_sq + tr_m + tr_r - 2 * nuclear
                return vals

            for name, value in zip(models, pool.map(fid, models.values()), strict=True):
                out[name][:, r] = value
    return out


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(m)
    return (vecs * np.sqrt(np.clip(vals, 0, None))[..., None, :]) @ np.swapaxes(vecs, -1, -2)


def _pooled(m: Moments, r: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of repeat ``r``'s units pooled with ``weights`` [B, C] (class counts)."""
    n = weights @ m.n[r]
    mu = (weights @ m.s1[r]) / n[:, None]
    d = m.s1.shape[-1]
    s2 = (weights @ m.s2[r].reshape(len(m.s2[r]), d * d)).reshape(len(weights), d, d)  # one BLAS product
    cov = (s2 - n[:, None, None] * mu[:, :, None] * mu[:, None, :]) / (n - 1)[:, None, None]
    return mu, (cov + np.swapaxes(cov, -1, -2)) / 2


FidForm = Moments | Samples


def _fids(models: Mapping[Hashable, FidForm], real: FidForm, weights: np.ndarray) -> dict[Hashable, np.ndarray]:
    """FID [B, R] of each model for each class weighting (``weights`` [B, C]) and repeat."""
    if isinstance(real, Samples):
        return _sample_space_fids(models, real, weights)  # type: ignore[arg-type]
    repeats = real.n.shape[0]
    out = {name: np.empty((len(weights), repeats)) for name in models}
    # one model per thread (LAPACK frees the GIL), each on one BLAS thread: no oversubscription
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=min(len(models), os.cpu_count() or 1)) as pool:
        for r in range(repeats):
            mu_r, cov_r = _pooled(real, r, weights)
            root = _sqrt_psd(cov_r)  # tr sqrt(S_m S_r) = sum sqrt(eig(R S_m R)), R = S_r^(1/2)
            trace_r = np.trace(cov_r, axis1=1, axis2=2)

            def fid(m: Moments, r: int = r, mu_r: np.ndarray = mu_r, root: np.ndarray = root,
                    trace_r: np.ndarray = trace_r) -> np.ndarray:
                mu, cov = _pooled(m, r, weights)
                eig = np.linalg.eigvalsh(root @ cov @ root)
                diff = mu - mu_r
                return ((diff * diff).sum(1) + np.trace(cov, axis1=1, axis2=2) + trace_r
                        - 2 * np.sqrt(np.clip(eig, 0, None)).sum(1))

            for name, value in zip(models, pool.map(fid, models.values()), strict=True):
                out[name][:, r] = value
    return out


def _check(models: Mapping[Hashable, FidForm], real: FidForm) -> None:
    for name, m in models.items():
        if type(m) is not type(real) or m.n.shape != real.n.shape or m.dim != real.dim:
            raise MetagenError(f"{name}: its units {m.n.shape} x {m.dim}-d do not pair with the real "
                               f"images' {real.n.shape} x {real.dim}-d")


def pooled_fid(model: FidForm, real: FidForm) -> float:
    """The evaluation's FID from the units: pooled over classes, averaged over repeats."""
    _check({"model": model}, real)
    return float(_fids({"m": model}, real, np.ones((1, real.n.shape[1])))["m"].mean())


def bootstrap_fids(models: Mapping[Hashable, FidForm], real: FidForm, samples: int, seed: int,
                   block_bytes: float = 64e6) -> dict[Hashable, np.ndarray]:
    """Each model's FID under ``samples`` paired resamplings of classes and repeats: [samples]."""
    _check(models, real)
    repeats, classes = real.n.shape
    d = real.dim if isinstance(real, Moments) else 1  # sample space: no d x d blocks
    rng = np.random.default_rng(seed)
    class_draws = rng.integers(0, classes, (samples, classes))
    repeat_draws = rng.integers(0, repeats, (samples, repeats))
    weights = np.stack([np.bincount(row, minlength=classes) for row in class_draws]).astype(np.float64)
    repeat_w = np.stack([np.bincount(row, minlength=repeats) for row in repeat_draws]) / repeats
    block = max(1, int(block_bytes // (8 * d * d)))
    out = {name: np.empty(samples) for name in models}
    for start in range(0, samples, block):
        part = _fids(models, real, weights[start : start + block])
        for name, per_repeat in part.items():
            out[name][start : start + block] = (per_repeat * repeat_w[start : start + block]).sum(1)
    return out


@dataclass(frozen=True)
class Interval:
    """``fid`` - ``other_fid`` (both as evaluated) and the bootstrap interval of that difference."""

    fid: float
    other_fid: float
    low: float
    high: float
    confidence: float

    @property
    def difference(self) -> float:
        return self.fid - self.other_fid

    @property
    def relative(self) -> float:
        return self.difference / self.other_fid if self.other_fid > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"fid": self.fid, "other_fid": self.other_fid, "difference": self.difference,
                "low": self.low, "high": self.high, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> Interval:
        return cls(float(d["fid"]), float(d["other_fid"]), float(d["low"]), float(d["high"]),
                   float(d["confidence"]))


def compare(model: FidForm, others: Mapping[K, FidForm], real: FidForm, samples: int, seed: int,
            confidence: float) -> dict[K, Interval]:
    """``model``'s FID minus each other's, with the paired bootstrap interval of each difference."""
    if not 0.5 < confidence < 1:
        raise MetagenError(f"confidence {confidence}: expected a value in (0.5, 1)")
    mine = object()  # a key no caller can pass
    boot = bootstrap_fids({mine: model, **others}, real, samples, seed)
    fid = pooled_fid(model, real)
    out = {}
    for name, m in others.items():
        diff = boot[mine] - boot[name]
        low, high = np.quantile(diff, [1 - confidence, confidence])
        out[name] = Interval(fid, pooled_fid(m, real), float(low), float(high), confidence)
    return out


@dataclass(frozen=True)
class FidUnits:
    """What a later paired comparison needs of an evaluation: the gated model's features and the
    held-out real features, per (repeat, class), under one extractor and protocol."""

    extractor: str
    protocol: str
    model: Units
    real: Units


def _pack(units: Units) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([[len(u) for u in r] for r in units], np.int64)
    return np.concatenate([np.asarray(u, np.float32) for r in units for u in r]), counts


def _unpack(flat: np.ndarray, counts: np.ndarray) -> list[list[np.ndarray]]:
    bounds = np.concatenate([[0], np.cumsum(counts.ravel())])
    parts = [flat[bounds[i] : bounds[i + 1]] for i in range(counts.size)]
    return [parts[r * counts.shape[1] : (r + 1) * counts.shape[1]] for r in range(counts.shape[0])]


def save_units(path: Any, units: FidUnits) -> None:
    from components.atomic import atomic_file

    model, model_n = _pack(units.model)
    real, real_n = _pack(units.real)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, model=model, model_n=model_n, real=real, real_n=real_n,
                                digests=np.array([units.extractor, units.protocol]))


def load_units(path: Any) -> FidUnits:
    try:
        with np.load(path, allow_pickle=False) as z:
            extractor, protocol = (str(s) for s in z["digests"])
            return FidUnits(extractor, protocol, _unpack(z["model"], z["model_n"]), _unpack(z["real"], z["real_n"]))
    except (OSError, KeyError, ValueError) as err:
        raise MetagenError(f"{path}: not a FID units file ({err}); evaluate again") from None
