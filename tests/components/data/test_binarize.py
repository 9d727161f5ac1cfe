"""Binarized images: fixed for evaluation, fresh in training, and the NLL of binary images a likelihood."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.data.binarize import binarized_split
from components.data.prepare import Split
from components.errors import ParamsError
from components.meta.tasks import TaskSampler
from components.models.vae import VAEConfig, build_vae, iwae_nll, param_dict
from tests.conftest import make_params
from tests.components.evaluation.test_likelihood import _exact_nll_and_posterior


def _grey(n_classes: int = 3, per_class: int = 20) -> Split:
    rng = np.random.default_rng(0)
    images = rng.random((n_classes * per_class, 1, 28, 28)).astype(np.float32) ** 2
    return Split(images, np.repeat(np.arange(n_classes), per_class), [f"c{i}" for i in range(n_classes)])


def test_the_evaluation_binarization_is_fixed_and_draws_each_pixel_with_its_grey_level() -> None:
    grey = _grey()
    a, b, other = binarized_split(grey, 1234), binarized_split(grey, 1234), binarized_split(grey, 99)
    assert set(np.unique(a.images)) == {0.0, 1.0} and a.images.dtype == grey.images.dtype
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, other.images)
    assert abs(a.images.mean() - grey.images.mean()) < 0.01  # E[x_bin] = grey level
    assert np.array_equal(a.labels, grey.labels) and a.classes == grey.classes


def test_training_tasks_are_a_fresh_binary_draw_and_a_pure_function_of_seed_and_step() -> None:
    grey = _grey()
    sampler = TaskSampler(grey, 5, 5, 4, 1, seed=0, binarize=True)
    first, again, later = sampler.sample(3, 2), sampler.sample(3, 2), sampler.sample(4, 2)
    assert set(torch.unique(first.support).tolist()) == {0.0, 1.0}
    assert torch.equal(first.support, again.support) and torch.equal(first.query, again.query)
    plain = TaskSampler(grey, 5, 5, 4, 1, seed=0).sample(3, 2)
    assert first.classes == plain.classes and torch.equal(first.eps_query, plain.eps_query)  # same draws otherwise
    assert not torch.equal(first.support, later.support)
    assert ((first.support == 1) <= (plain.support > 0)).all()  # a pixel can be 1 only where it is not black


def test_the_nll_of_binarized_images_is_their_exact_likelihood() -> None:
    """The evaluation's binary images under a 2-d latent VAE: IWAE with a proposal at the true
    posterior equals -log p(x) by quadrature (a Bernoulli decoder is a distribution over binary
    images, so this is a likelihood in nats)."""
    model = build_vae(VAEConfig(1, 28, 2, 8, "bernoulli", 4), seed=0).double()
    with torch.no_grad():
        model.dec_in.weight.mul_(6.0)
    x = torch.from_numpy(binarized_split(_grey(1, 3), 7).images).double()
    exact, mean, var = _exact_nll_and_posterior(model, x)
    model.encode = lambda xx, context=None, features=None: (mean, var.log())
    est = iwae_nll(model, param_dict(model), x, 1000, torch.Generator().manual_seed(2), (1.0,), chunk=10**6)
    assert (est - exact).abs().max() < 0.05


def test_binarize_needs_the_bernoulli_likelihood() -> None:
    with pytest.raises(ParamsError, match="model.binarize needs model.likelihood bernoulli"):
        make_params("model.binarize=true", "model.likelihood=gaussian")
