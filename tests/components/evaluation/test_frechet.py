"""FID / KID: closed forms and cross-checks against pytorch-fid and torchmetrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from components.errors import MetagenError
from components.evaluation.frechet import (
    cached_statistics,
    fid_from_features,
    frechet_distance,
    kid,
    statistics,
)


@pytest.mark.parametrize("dims", [64, 2048])
def test_matches_pytorch_fid(dims: int) -> None:
    rng = np.random.default_rng(dims)
    a = rng.normal(size=(dims + 200, dims))
    b = rng.normal(size=(dims + 200, dims)) @ (np.eye(dims) + 0.05 * rng.normal(size=(dims, dims))) + 0.3
    sa, sb = statistics(a), statistics(b)
    ours = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    ref = calculate_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_equal_covariances_closed_form() -> None:
    rng = np.random.default_rng(0)
    m = rng.normal(size=(8, 8))
    sigma = m @ m.T + np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-9)
    assert frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0.0, abs=1e-9)


def test_singular_covariances_are_finite_and_agree() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5  # n < d: rank-deficient
    sa, sb = statistics(a), statistics(b)
    ours = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert np.isfinite(ours) and ours > 0
    ref = calculate_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert ours == pytest.approx(ref, rel=1e-4)


def test_matches_torchmetrics_with_the_same_feature_module() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.manual_seed(0)

    class Features(torch.nn.Module):
        num_features = 16

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16), torch.nn.Tanh())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.to(self.net[1].weight.dtype))

    feat = Features().double()
    real = torch.rand(200, 3, 8, 8, dtype=torch.float64)
    fake = torch.rand(200, 3, 8, 8, dtype=torch.float64) ** 2
    metric = FrechetInceptionDistance(feature=feat, normalize=True).double()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ref = float(metric.compute())
    with torch.no_grad():
        ours = fid_from_features(feat(fake).numpy(), feat(real).numpy())
    assert ours == pytest.approx(ref, rel=1e-5)


def test_kid_zero_for_same_distribution_positive_when_shifted() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same, _ = kid(a, b, n_subsets=20, subset_size=200, seed=0)
    shifted, _ = kid(a, b + 1.0, n_subsets=20, subset_size=200, seed=0)
    assert abs(same) < 0.02
    assert shifted > 0.5
    capped, _ = kid(a[:30], b[:50] + 1.0, n_subsets=5, subset_size=1000, seed=0)  # subset size capped at 30
    assert capped > 0.5


def test_nan_features_are_an_error() -> None:
    a = np.ones((10, 4))
    a[3, 2] = np.nan
    with pytest.raises(MetagenError, match="NaN"):
        statistics(a, "generated features")


def test_statistics_cache_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(50, 6))
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return feats

    s1 = cached_statistics(tmp_path, "data-abc_test_ext123", compute)
    s2 = cached_statistics(tmp_path, "data-abc_test_ext123", compute)
    assert len(calls) == 1 and (tmp_path / "data-abc_test_ext123.npz").is_file()
    np.testing.assert_array_equal(s1.sigma, s2.sigma)
    assert s2.n == 50
