"""Meta-gradients: vmap vs plain loop, finite differences, zero-step identities."""

from __future__ import annotations

import pytest
import torch

from components.meta.algorithms import AlgoConfig, adapt_keys, meta_gradients
from tests.components.meta.reference_loop import meta_gradients_loop
from components.meta.learner import MetaLearner
from components.meta.tasks import TaskBatch
from components.models.vae import VAEConfig, build_vae, param_dict, per_pixel_loss
from tests.conftest import make_params

ALGOS = ["maml", "fomaml", "reptile", "metasgd"]


def tiny(latent: int = 3, width: int = 4, likelihood: str = "bernoulli", channels: int = 1):  # noqa: ANN201
    model = build_vae(VAEConfig(channels, 28, latent, width, likelihood, 2), seed=0).double()
    return model, param_dict(model)


def batch(b: int = 3, k: int = 2, q: int = 3, steps: int = 2, latent: int = 3, channels: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    return TaskBatch(
        torch.rand(b, k, channels, 28, 28, generator=g, dtype=torch.float64),
        torch.rand(b, q, channels, 28, 28, generator=g, dtype=torch.float64),
        torch.randn(b, steps, k + q, latent, generator=g, dtype=torch.float64),
        torch.randn(b, q, latent, generator=g, dtype=torch.float64),
        tuple(range(b)),
    )


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("scope", ["all", "decoder"])
def test_vmap_equals_loop(algo: str, scope: str) -> None:
    model, params = tiny(likelihood="gaussian" if scope == "decoder" else "bernoulli")
    cfg = AlgoConfig(algo, 2, 0.3, adapt_keys(model, "all" if algo == "reptile" else scope))  # type: ignore[arg-type]
    lrs = {k: torch.full_like(params[k], 0.3) for k in cfg.keys} if algo == "metasgd" else None
    b = batch()
    l1, g1 = meta_gradients(model, params, lrs, b, cfg, impl="vmap")
    l2, g2 = meta_gradients_loop(model, params, lrs, b, cfg)
    assert set(g1) == set(g2)
    assert abs(float(l1 - l2)) <= 1e-10
    assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) <= 1e-5
    assert max(float(g.abs().max()) for g in g1.values()) > 0  # not trivially zero


def test_second_order_maml_matches_finite_differences() -> None:
    model, params = tiny(latent=2, width=4)
    cfg = AlgoConfig("maml", 2, 0.5, adapt_keys(model, "all"))
    b = batch(b=2, latent=2)
    _, g = meta_gradients(model, params, None, b, cfg, impl="vmap")
    gen = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    h = 1e-5

    def loss_at(sign: float) -> float:
        p = {k: v + sign * h * direction[k] for k, v in params.items()}
        return float(meta_gradients_loop(model, p, None, b, cfg)[0])

    numeric = (loss_at(1.0) - loss_at(-1.0)) / (2 * h)
    analytic = sum(float((g[k] * direction[k]).sum()) for k in params)
    assert numeric == pytest.approx(analytic, rel=1e-4, abs=1e-8)
    # first-order MAML drops the second-order term: it is a different number here
    _, g_fo = meta_gradients(model, params, None, b, AlgoConfig("fomaml", 2, 0.5, cfg.keys), impl="vmap")
    fo = sum(float((g_fo[k] * direction[k]).sum()) for k in params)
    assert abs(fo - analytic) > 1e-6


def test_zero_inner_steps_maml_is_plain_gradient() -> None:
    model, params = tiny()
    b = batch(b=2, steps=1)
    cfg = AlgoConfig("maml", 0, 0.5, adapt_keys(model, "all"))
    _, g = meta_gradients(model, params, None, b, cfg, impl="vmap")
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = sum(per_pixel_loss(model, leaves, b.query[t], b.eps_query[t]) for t in range(2)) / 2
    plain = torch.autograd.grad(loss, list(leaves.values()))
    for k, ref in zip(leaves, plain, strict=True):
        torch.testing.assert_close(g[k], ref, rtol=0, atol=1e-12)


def test_zero_inner_steps_reptile_leaves_weights() -> None:
    params = make_params("meta.algorithm=reptile", "meta.inner_steps=0")
    model = build_vae(VAEConfig(1, 28, 3, 4, "bernoulli", 2), seed=0)
    learner = MetaLearner(model, params.meta)
    before = {k: v.clone() for k, v in param_dict(model).items()}
    b = batch(b=2, steps=1)
    learner.meta_step(TaskBatch(*(t.float() for t in (b.support, b.query, b.eps_inner, b.eps_query)), b.classes))
    for k, v in param_dict(model).items():
        assert torch.equal(v, before[k]), k


def test_meta_step_changes_params_and_metasgd_rates() -> None:
    params = make_params("meta.algorithm=metasgd", "meta.inner_steps=1", "meta.adapt_scope=all", "model.context_dim=0",
                         "meta.inner_lr=0.1")
    model = build_vae(VAEConfig(1, 28, 3, 4, "bernoulli", 2), seed=0)
    learner = MetaLearner(model, params.meta)
    lr_before = {k: v.clone() for k, v in learner.inner_lrs().items()}
    b = batch(b=2, steps=1)
    out = learner.meta_step(TaskBatch(*(t.float() for t in (b.support, b.query, b.eps_inner, b.eps_query)), b.classes))
    assert out["train_loss"] > 0 and out["grad_norm"] > 0
    assert any(not torch.equal(v, lr_before[k]) for k, v in learner.inner_lrs().items())
