"""The IWAE estimate of -log p(x) against the exact likelihood of a VAE with a 2-d latent
(quadrature over z), with a well-matched and with an overconfident proposal."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from components.models.vae import ConvVAE, VAEConfig, build_vae, decode, iwae_nll, neg_elbo, param_dict


def _exact_nll_and_posterior(model: ConvVAE, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-log p(x) by a Riemann sum over a grid of z (the integrand is smooth, the prior N(0, I)),
    and the mean and variance of p(z|x) on the same grid."""
    grid = torch.linspace(-6, 6, 81, dtype=torch.float64)
    z = torch.cartesian_prod(grid, grid)
    params = param_dict(model)
    with torch.no_grad():
        ll = torch.cat([torch.stack([model.log_likelihood(out, xi.expand(len(out), -1, -1, -1)) for xi in x])
                        for out in (decode(model, params, zc) for zc in z.split(2048))], dim=1)
    log_joint = ll - 0.5 * z.pow(2).sum(-1) - math.log(2 * math.pi)
    cell = float(grid[1] - grid[0]) ** 2
    post = torch.softmax(log_joint, dim=-1)
    mean = post @ z
    return -(torch.logsumexp(log_joint, dim=-1) + math.log(cell)), mean, post @ z.pow(2) - mean.pow(2)


@pytest.fixture(scope="module")
def vae_and_truth() -> tuple[ConvVAE, Tensor, Tensor, Tensor, Tensor]:
    model = build_vae(VAEConfig(1, 28, 2, 8, "bernoulli", 4), seed=0).double()
    with torch.no_grad():
        model.dec_in.weight.mul_(6.0)  # the image depends on z enough for a posterior unlike the prior
    x = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64) > 0.7).double()
    exact, mean, var = _exact_nll_and_posterior(model, x)
    return model, x, exact, mean, var


def _gap(model: ConvVAE, x: Tensor, exact: Tensor, samples: int, scales: tuple[float, ...]) -> Tensor:
    est = iwae_nll(model, param_dict(model), x, samples, torch.Generator().manual_seed(2), scales, chunk=10**6)
    return est - exact


def test_iwae_with_the_true_posterior_as_proposal_is_the_exact_likelihood(vae_and_truth) -> None:
    model, x, exact, mean, var = vae_and_truth
    assert float((var - 1).abs().max()) > 0.05 and float(mean.abs().max()) > 0.2  # not the prior
    model.encode = lambda xx, context=None, features=None: (mean, var.log())  # q(z|x) = moments of p(z|x)
    try:
        for scales in ((1.0,), (1.0, 1.5, 2.0)):
            assert _gap(model, x, exact, 1000, scales).abs().max() < 0.05, scales
    finally:
        del model.encode


def test_a_widened_mixture_proposal_tightens_the_bound_of_an_overconfident_posterior(vae_and_truth) -> None:
    """An encoder 20x too sure (variance / e^3), as one trained with beta < 1 is: q alone leaves the
    bound loose even with 1,000 samples; the mixture widened by 1.5 and 2 closes most of it with
    100, and stays an upper bound on -log p(x)."""
    model, x, exact, mean, var = vae_and_truth
    model.encode = lambda xx, context=None, features=None: (mean, var.log() - 3.0)
    try:
        alone = _gap(model, x, exact, 1000, (1.0,))
        mixture = _gap(model, x, exact, 100, (1.0, 1.5, 2.0))
        mixture_1000 = _gap(model, x, exact, 1000, (1.0, 1.5, 2.0))
    finally:
        del model.encode
    assert float(alone.mean()) > 0.5
    assert float(mixture.mean()) < 0.5 * float(alone.mean())
    assert float(mixture_1000.min()) > -0.05  # an upper bound on the NLL, up to Monte Carlo noise


@pytest.mark.parametrize("attention", [False, True])
def test_the_channels_last_nll_is_the_contiguous_one(attention: bool) -> None:
    """The protocol's IWAE runs in the channels-last layout (faster on a CPU): the same estimate as
    PyTorch's default layout, for a plain VAE and for one whose decoder attends over its supports."""
    from components.models.vae import with_context

    model = build_vae(VAEConfig(1, 28, 4, 8, "bernoulli", 4, 6, support_attention=attention), seed=0).double()
    g = torch.Generator().manual_seed(3)
    support, x = (torch.rand(n, 1, 28, 28, generator=g, dtype=torch.float64).round() for n in (5, 7))
    params = with_context(model, param_dict(model), support)
    kw = {"samples": 40, "proposal_scales": (1.0, 2.0), "chunk": 100}  # 2 images a chunk: several chunks
    cl = iwae_nll(model, params, x, generator=torch.Generator().manual_seed(4), layout="channels_last", **kw)
    nchw = iwae_nll(model, params, x, generator=torch.Generator().manual_seed(4), layout="contiguous", **kw)
    assert cl.shape == (7,) and torch.isfinite(cl).all()
    torch.testing.assert_close(cl, nchw, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("arch", ["conv", "ladder"])
def test_pixel_scale_reads_each_pixels_scale_from_the_decoder(arch: str) -> None:
    """``model.pixel_scale``: the decoder's channels after the means are each pixel's log-scale, so
    the likelihood is the discretized Gaussian of each pixel at its own scale (a probability over
    its 256 levels, as the per-channel one), and the scale is learned with the decoder."""
    from components.models.vae import MIN_LOG_SCALE, PIXEL_LOG_SCALE_START, discretized_gaussian_log_prob

    cfg = VAEConfig(3, 32, 4, 8, "gaussian", 4, arch=arch, pixel_scale=True)
    assert cfg.cache_key()["pixel_scale"] is True  # its caches apart from the per-channel model's,
    assert "pixel_scale" not in replace(cfg, pixel_scale=False).cache_key()  # whose caches predate the option
    model = build_vae(cfg, seed=0).double()
    assert not hasattr(model, "log_sigma")  # no per-channel scale beside the decoder's
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(1)).double() / 255
    out = torch.randn(4, 6, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    log_sigma = (out[:, 3:] + PIXEL_LOG_SCALE_START).clamp(min=MIN_LOG_SCALE)
    expected = discretized_gaussian_log_prob(x, torch.sigmoid(out[:, :3]), log_sigma).flatten(1).sum(-1)
    assert torch.allclose(model.log_likelihood(out, x), expected)
    assert torch.equal(model.mean_image(out), torch.sigmoid(out[:, :3]))
    wider = out.clone()
    wider[:, 3:] += 1.0  # the same means, every pixel's scale e times wider: another likelihood
    assert not torch.allclose(model.log_likelihood(wider, x), expected)
    params = param_dict(model)
    nll = iwae_nll(model, params, x, 4, torch.Generator().manual_seed(3))
    assert nll.shape == (4,) and bool((nll > 0).all())
    eps = torch.randn(4, model.noise_dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    weights = {k: v.detach().requires_grad_() for k, v in params.items()}
    neg_elbo(model, weights, x, eps).mean().backward()
    last = f"decoder.{len(model.decoder) - 1}.weight" if arch == "conv" else "out.weight"
    assert weights[last].shape[0] == 6
    assert float(weights[last].grad[3:].abs().sum()) > 0  # the scale channels learn
