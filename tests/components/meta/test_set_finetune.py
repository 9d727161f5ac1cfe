"""The set-conditioned meta-model's fine-tuning on its K supports (``eval.set_finetune``): joint
(each support under the context of all K) and leave-one-out (each under the other K - 1's, as a
meta-training query is scored), on both architectures."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from components.meta.adaptation import AdaptationRule, finetune_leave_one_out, leave_one_out_loss
from components.models.vae import CONTEXT, VAEConfig, build_vae, neg_elbo, param_dict, set_context, with_context

RULE = AdaptationRule(steps=0, inner_lr=1.0, scope="context", learned_lrs=False, sampling="prior", temperature=1.0,
                      finetune_steps=5, finetune_lr=1e-3, set_finetune="leave_one_out")


def _model(arch: str, context: int = 4, attention: bool = False):  # noqa: ANN202
    cfg = VAEConfig(1, 28, 2, 4, "bernoulli", 2, context, arch=arch, support_attention=attention)
    model = build_vae(cfg, seed=0).double()
    return model, param_dict(model)


def _support(k: int = 4) -> torch.Tensor:
    return torch.rand(k, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64).round()


@pytest.mark.parametrize("arch", ["conv", "ladder"])
def test_each_support_is_scored_under_the_context_of_the_others(arch: str) -> None:
    model, params = _model(arch)
    support = _support(4)
    eps = torch.randn(4, model.noise_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.stack([
        neg_elbo(model, {**params, CONTEXT: set_context(model, params, support[[j for j in range(4) if j != i]])},
                 support[i: i + 1], eps[i: i + 1])[0]
        for i in range(4)
    ]).mean() / model.num_pixels
    got = leave_one_out_loss(model, params, support, eps)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    joint = neg_elbo(model, with_context(model, params, support), support, eps).mean() / model.num_pixels
    assert abs(float(got - joint)) > 1e-9  # with itself in its context a support is scored otherwise


@pytest.mark.parametrize("arch", ["conv", "ladder"])
def test_leave_one_out_fine_tuning_lowers_its_loss_and_adapts_from_the_tuned_context(arch: str) -> None:
    model, params = _model(arch)
    support = _support(5)
    eps = torch.randn(5, model.noise_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tuned = finetune_leave_one_out(model, params, support, 30, 1e-2, torch.Generator().manual_seed(3))
    assert CONTEXT not in tuned and tuned.keys() == params.keys()
    assert leave_one_out_loss(model, tuned, support, eps) < leave_one_out_loss(model, params, support, eps)
    fast = RULE.adapt(model, params, None, support, torch.Generator().manual_seed(3))
    # the rule: the same tuning (its noise after the context steps' draw), then the context of all K under it
    gen = torch.Generator().manual_seed(3)
    torch.randn(1, 5, model.noise_dim, generator=gen)
    expected = with_context(model, finetune_leave_one_out(model, params, support, 5, 1e-3, gen), support)
    assert fast.keys() == expected.keys()
    for key in fast:
        torch.testing.assert_close(fast[key], expected[key])
    assert not torch.equal(fast[CONTEXT], with_context(model, params, support)[CONTEXT])


def test_no_fine_tuning_is_the_same_in_both_modes_and_a_plain_vae_ignores_the_mode() -> None:
    model, params = _model("ladder")
    support = _support(5)
    for rule in (replace(RULE, finetune_lr=0.0), replace(RULE, finetune_steps=0)):
        a = rule.adapt(model, params, None, support, torch.Generator().manual_seed(0))
        b = replace(rule, set_finetune="joint").adapt(model, params, None, support, torch.Generator().manual_seed(0))
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    plain, plain_params = _model("ladder", context=0)
    rule = replace(RULE, scope="all")  # the baselines' rule: fine-tuning alone, every weight
    a = rule.adapt(plain, plain_params, None, support, torch.Generator().manual_seed(0))
    b = replace(rule, set_finetune="joint").adapt(plain, plain_params, None, support, torch.Generator().manual_seed(0))
    assert not torch.equal(a["out.weight"], plain_params["out.weight"])
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="set_finetune must be one of"):
        replace(RULE, set_finetune="loo")
    model, params = _model("conv", attention=True)
    with pytest.raises(ValueError, match="support_attention"):
        finetune_leave_one_out(model, params, _support(3), 1, 1e-3, torch.Generator())
    model, params = _model("ladder")
    with pytest.raises(ValueError, match="at least 2 supports"):
        finetune_leave_one_out(model, params, _support(1), 1, 1e-3, torch.Generator())


def test_a_rule_registered_before_the_field_fine_tunes_jointly() -> None:
    data = RULE.to_dict()
    del data["set_finetune"]
    assert AdaptationRule.from_dict(data).set_finetune == "joint"
