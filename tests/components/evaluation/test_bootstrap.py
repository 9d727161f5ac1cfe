"""The paired bootstrap of FID differences: synthetic models with a known answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.errors import MetagenError
from components.evaluation.bootstrap import (
    WIDE,
    FidUnits,
    Moments,
    Samples,
    bootstrap_fids,
    compare,
    fid_units,
    load_units,
    pooled_fid,
    save_units,
)
from components.evaluation.frechet import fid_from_features

R, C, D = 3, 12, 4


def _units(seed: int, shift: float = 0.0, n: int = 40) -> list[list[np.ndarray]]:
    """[repeat][class] samples around each class's mean (``shift``: every sample moved off it)."""
    means = np.random.default_rng(0).normal(0, 3, (C, D))
    rng = np.random.default_rng(seed)
    return [[rng.normal(means[c] + shift, 1.0, (n, D)) for c in range(C)] for _ in range(R)]


REAL = Moments.of(_units(1))


def _interval(model: list, other: list) -> tuple[float, float, float]:
    iv = compare(Moments.of(model), {"other": Moments.of(other)}, REAL, 500, 0, 0.95)["other"]
    return iv.difference, iv.low, iv.high


def test_pooled_fid_from_units_is_the_evaluations_fid() -> None:
    model, real = _units(2, 0.5), _units(1)
    expected = np.mean([fid_from_features(np.concatenate(m), np.concatenate(r)) for m, r in zip(model, real)])
    assert pooled_fid(Moments.of(model), REAL) == pytest.approx(expected, rel=1e-9)


def test_a_clear_win_a_clear_loss_and_a_tie() -> None:
    good, bad, also_good = _units(2), _units(3, shift=1.0), _units(4)
    diff, low, high = _interval(good, bad)
    assert diff < 0 and low < high < 0  # a clear win: the whole interval below zero
    diff, low, high = _interval(bad, good)
    assert diff > 0 and 0 < low < high  # a clear loss
    diff, low, high = _interval(good, also_good)
    assert low < 0 < high  # the same distribution: a tie
    assert high - low < 1.0


def test_the_same_samples_give_a_zero_difference_and_the_same_seed_the_same_interval() -> None:
    good, bad = _units(2), _units(3, shift=0.3)
    assert _interval(good, good) == (0.0, 0.0, 0.0)
    assert _interval(good, bad) == _interval(good, bad)


def test_sample_space_gives_the_moments_figures() -> None:
    """The wide-feature form (Gram matrices, nuclear norm) is the same FID under every resampling,
    on features wide enough that every covariance is low-rank as well as on narrow ones."""
    for d, n in ((D, 40), (64, 3)):
        rng = np.random.default_rng(d)
        real, a, b = ([[rng.normal(s, 1.0, (n + c % 2, d)) for c in range(C)] for _ in range(R)] for s in (0, 0.4, 0.1))
        by_moments = bootstrap_fids({"a": Moments.of(a), "b": Moments.of(b)}, Moments.of(real), 200, 7)
        by_samples = bootstrap_fids({"a": Samples.of(a), "b": Samples.of(b)}, Samples.of(real), 200, 7)
        for name in ("a", "b"):
            assert np.allclose(by_samples[name], by_moments[name], rtol=1e-7), (d, name)
        expected = np.mean([fid_from_features(np.concatenate(m), np.concatenate(r)) for m, r in zip(a, real)])
        assert pooled_fid(Samples.of(a), Samples.of(real)) == pytest.approx(expected, rel=1e-7)
    assert isinstance(fid_units(_units(1)), Moments)
    wide = [[np.zeros((2, WIDE)) + c for c in range(2)]]
    assert isinstance(fid_units(wide), Samples)
    with pytest.raises(MetagenError, match="do not pair"):
        compare(Samples.of(_units(2)), {"other": Moments.of(_units(3))}, REAL, 10, 0, 0.95)


def test_units_that_do_not_pair_are_refused() -> None:
    with pytest.raises(MetagenError, match="do not pair"):
        compare(Moments.of(_units(2)[:2]), {"other": Moments.of(_units(3))}, REAL, 100, 0, 0.95)


def test_units_round_trip_through_a_file(tmp_path: Path) -> None:
    units = FidUnits("ext", "proto", _units(2, n=5), _units(1, n=7))
    save_units(tmp_path / "u.npz", units)
    back = load_units(tmp_path / "u.npz")
    assert (back.extractor, back.protocol) == ("ext", "proto")
    assert np.allclose(back.model[2][5], units.model[2][5], atol=1e-6) and len(back.real[0]) == C
    (tmp_path / "bad.npz").write_text("not an npz")
    with pytest.raises(MetagenError, match="bad.npz: not a FID units file"):
        load_units(tmp_path / "bad.npz")
