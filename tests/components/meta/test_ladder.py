"""The ladder (hierarchical set-conditioned VAE): the set-VAE's checks on it (permutation invariance,
the batched meta-step equal to the per-task loop, second-order gradients against finite
differences), a likelihood estimate that is a bound and tightens, and sampling at both levels."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.meta.algorithms import AlgoConfig, adapt_keys, key_shape, meta_gradients
from components.meta.tasks import TaskBatch
from components.models.vae import (CONTEXT, MEMORY, VAEConfig, build_vae, iwae_nll, neg_elbo, param_dict, sample,
                                   with_context)
from tests.components.meta.reference_loop import meta_gradients_loop


def _model(context: int = 4, likelihood: str = "bernoulli", size: int = 28, pool: str = "mean",  # noqa: ANN202
           warp: bool = False, glob: int = 0, attention: bool = False):
    cfg = VAEConfig(1, size, 2, 4, likelihood, 2, context, arch="ladder", set_pool=pool, context_warp=warp,
                    global_latent=glob, support_attention=attention)
    model = build_vae(cfg, seed=0).double()
    with torch.no_grad():  # the attention's output starts at zero: move it so its path is exercised
        for name, p in model.named_parameters():
            if name.startswith("attn.out."):
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model, param_dict(model)


def _batch(model, b: int = 2, k: int = 3, q: int = 2, steps: int = 2) -> TaskBatch:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    n = model.noise_dim
    return TaskBatch(torch.rand(b, k, 1, 28, 28, generator=g, dtype=torch.float64).round(),
                     torch.rand(b, q, 1, 28, 28, generator=g, dtype=torch.float64).round(),
                     torch.randn(b, steps, k + q, n, generator=g, dtype=torch.float64),
                     torch.randn(b, q, n, generator=g, dtype=torch.float64), tuple(range(b)))


def test_sizes_and_the_unconditional_ladder() -> None:
    model, params = _model()
    assert model.noise_dim == 2 * (7 * 7 + 14 * 14)  # latent channels x both grids
    assert model.context_size == 28 * 28 + 4 * (14 * 14 + 7 * 7)  # mean support image + both scales' maps
    pooled, _ = _model(pool="mean_max")  # the maximum's maps beside the mean's: twice the set blocks' inputs
    assert pooled.set1.conv1.in_channels == 2 * 4 and pooled.set2.conv1.in_channels == 2 * 8
    assert pooled.context_size == model.context_size
    big, _ = _model(size=64)
    assert big.noise_dim == 2 * (8 * 8 + 16 * 16)
    plain, plain_params = _model(context=0)
    assert not plain.conditional and plain.context_size == 0
    x = _batch(plain).query[0]
    assert neg_elbo(plain, plain_params, x, torch.zeros(2, plain.noise_dim, dtype=torch.float64)).shape == (2,)
    with pytest.raises(ValueError, match="class context"):
        neg_elbo(model, params, x, torch.zeros(2, model.noise_dim, dtype=torch.float64))


VARIANTS = [("mean", False, 0), ("mean_max", False, 0), ("mean", True, 0), ("mean", True, 3)]  # set_pool, context_warp, global_latent


@pytest.mark.parametrize(("pool", "warp", "glob"), VARIANTS)
def test_context_is_permutation_invariant_and_reads_the_supports(pool: str, warp: bool, glob: int) -> None:
    model, params = _model(pool=pool, warp=warp, glob=glob)
    batch = _batch(model, k=3)
    support, x, eps = batch.support[0], batch.query[0], batch.eps_query[0]
    a = with_context(model, params, support)
    b = with_context(model, params, support[torch.tensor([2, 0, 1])])
    assert a[CONTEXT].shape == (model.context_size,)
    assert torch.allclose(a[CONTEXT], b[CONTEXT], atol=1e-12)
    assert torch.allclose(neg_elbo(model, a, x, eps), neg_elbo(model, b, x, eps), atol=1e-10)
    other = with_context(model, params, batch.support[1])
    assert float((neg_elbo(model, other, x, eps) - neg_elbo(model, a, x, eps)).abs().max()) > 1e-6
    # a batch of tasks' contexts are each task's own
    both = with_context(model, params, batch.support)[CONTEXT]
    assert torch.allclose(both[1], other[CONTEXT], atol=1e-12)


@pytest.mark.parametrize(("algo", "pool", "warp", "glob"), [
    ("maml", "mean", False, 0), ("fomaml", "mean", False, 0), ("metasgd", "mean", False, 0),
    ("maml", "mean_max", False, 0), ("maml", "mean", True, 0), ("fomaml", "mean", True, 0), ("maml", "mean", True, 3)])
def test_batched_context_step_equals_loop(algo: str, pool: str, warp: bool, glob: int) -> None:
    model, params = _model(pool=pool, warp=warp, glob=glob)
    keys = adapt_keys(model, "context")
    cfg = AlgoConfig(algo, 2, 0.3, keys)  # type: ignore[arg-type]
    lrs = {CONTEXT: torch.full(key_shape(model, CONTEXT), 0.3, dtype=torch.float64)} if algo == "metasgd" else None
    b = _batch(model, b=3)
    l1, g1 = meta_gradients(model, params, lrs, b, cfg, impl="batched")
    l2, g2 = meta_gradients_loop(model, params, lrs, b, cfg)
    assert set(g1) == set(g2)
    assert abs(float(l1 - l2)) <= 1e-10
    assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) <= 1e-8
    assert float(g1["set1.conv2.weight"].abs().max()) > 0  # the set encoder is trained


def test_support_attention_reads_each_support_and_its_meta_gradients_are_exact() -> None:
    """``support_attention`` on the ladder: the memory is the supports' trunk maps (one row a
    support); the ELBO is the same for shuffled supports and another for another class's maps under
    the same context; the batched meta-step is the loop's gradient (the memory dropped with the
    context), second order against finite differences; the IWAE estimate and sampling read it; the
    baselines' architecture (no set) has no attention."""
    from dataclasses import replace

    from components.evaluation.evaluate import baseline_vae_config
    from tests.conftest import make_params

    model, params = _model(warp=True, glob=3, attention=True)
    batch = _batch(model, k=3)
    support, x, eps = batch.support[0], batch.query[0], batch.eps_query[0]
    start = with_context(model, params, support)
    assert start[MEMORY].shape == (3, 4 * 14 * 14 + 8 * 7 * 7)  # each support's trunk maps (the coarse ones are read)
    shuffled = with_context(model, params, support[torch.tensor([2, 0, 1])])
    a = neg_elbo(model, start, x, eps)
    assert torch.allclose(a, neg_elbo(model, shuffled, x, eps), atol=1e-10)
    other = {**start, MEMORY: with_context(model, params, batch.support[1])[MEMORY]}
    assert float((neg_elbo(model, other, x, eps) - a).abs().max()) > 1e-6
    plain, _ = _model(warp=True, glob=3)  # the same weights but the attention's: it is what moves the ELBO
    assert float((neg_elbo(plain, {k: v for k, v in start.items() if k != MEMORY and "attn" not in k}, x, eps)
                  - a).abs().max()) > 1e-6
    with pytest.raises(ValueError, match="memory"):
        neg_elbo(model, {k: v for k, v in start.items() if k != MEMORY}, x, eps)
    for algo in ("maml", "fomaml"):
        cfg = AlgoConfig(algo, 2, 0.3, adapt_keys(model, "context"))  # type: ignore[arg-type]
        dropped = replace(_batch(model, b=3), keep_context=torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
        l1, g1 = meta_gradients(model, params, None, dropped, cfg, impl="batched")
        l2, g2 = meta_gradients_loop(model, params, None, dropped, cfg)
        assert abs(float(l1 - l2)) <= 1e-10
        assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) <= 1e-8
        assert float(g1["attn.q.weight"].abs().max()) > 0 and float(g1["attn.pos"].abs().max()) > 0
    cfg = AlgoConfig("maml", 2, 0.5, adapt_keys(model, "context"))
    b = _batch(model)
    _, g = meta_gradients_loop(model, params, None, b, cfg)
    direction = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=v.dtype)
                 for k, v in params.items()}
    h = 1e-5

    def loss_at(sign: float) -> float:
        return float(meta_gradients(model, {k: v + sign * h * direction[k] for k, v in params.items()}, None, b, cfg,
                                    impl="batched")[0])

    numeric = (loss_at(1) - loss_at(-1)) / (2 * h)
    assert sum(float((g[k] * direction[k]).sum()) for k in params) == pytest.approx(numeric, rel=1e-4, abs=1e-9)
    nll = iwae_nll(model, start, x, 50, torch.Generator().manual_seed(0))
    assert nll.shape == (2,) and bool(torch.isfinite(nll).all())
    for mode in ("prior", "support"):
        one = sample(model, start, 3, torch.Generator().manual_seed(0), mode, support, 0.8)
        two = sample(model, other, 3, torch.Generator().manual_seed(0), mode, support, 0.8)
        assert one.shape == (3, 1, 28, 28) and float((one - two).abs().max()) > 1e-6
    import numpy as np

    from components.data.prepare import Split

    with_set = make_params("model.arch=ladder", "model.support_attention=true", "model.context_dim=4")
    split = Split(np.zeros((2, 1, 28, 28), dtype=np.float32), np.zeros(2, dtype=np.int64), ["a"])
    baseline = baseline_vae_config(with_set, split)
    assert baseline.context_dim == 0 and not build_vae(baseline, seed=0).attends


@pytest.mark.parametrize("algo", ["maml", "reptile"])
def test_all_weights_vmap_equals_loop(algo: str) -> None:
    model, params = _model()
    cfg = AlgoConfig(algo, 1, 0.05, adapt_keys(model, "all"))  # type: ignore[arg-type]
    b = _batch(model)
    l1, g1 = meta_gradients(model, params, None, b, cfg, impl="vmap")
    l2, g2 = meta_gradients_loop(model, params, None, b, cfg)
    assert abs(float(l1 - l2)) <= 1e-10
    assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) <= 1e-6


@pytest.mark.parametrize(("pool", "warp", "glob"), VARIANTS)
def test_second_order_context_maml_matches_finite_differences(pool: str, warp: bool, glob: int) -> None:
    model, params = _model(pool=pool, warp=warp, glob=glob)
    cfg = AlgoConfig("maml", 2, 0.5, adapt_keys(model, "context"))
    b = _batch(model)
    _, g = meta_gradients_loop(model, params, None, b, cfg)
    gen = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    h = 1e-5

    def loss_at(sign: float) -> float:
        p = {k: v + sign * h * direction[k] for k, v in params.items()}
        return float(meta_gradients(model, p, None, b, cfg, impl="batched")[0])

    numeric = (loss_at(1) - loss_at(-1)) / (2 * h)
    analytic = sum(float((g[k] * direction[k]).sum()) for k in params)
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_the_warp_is_the_identity_at_zero_and_shifts_the_context_maps() -> None:
    from components.models.ladder import WARP_SCALE, LadderVAE

    maps = tuple(torch.rand(2, c, s, s, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                 for c, s in ((1, 28), (4, 14), (4, 7)))
    same = LadderVAE._warp(maps, torch.zeros(2, 6, dtype=torch.float64))
    for a, b in zip(same, maps):
        torch.testing.assert_close(a, b)
    shift = torch.zeros(2, 6, dtype=torch.float64)
    shift[:, 2] = 2 * (2 / 28) / WARP_SCALE  # x + 2 pixels of the 28 px map (1 of the 14 px one)
    moved = LadderVAE._warp(maps, shift)
    torch.testing.assert_close(moved[0][..., :-2], maps[0][..., 2:])  # output pixel j reads input pixel j + 2
    torch.testing.assert_close(moved[1][..., :-1], maps[1][..., 1:])
    model, _ = _model(warp=True)
    assert model.noise_dim == 6 + 2 * (7 * 7 + 14 * 14)  # the warp's latent first
    assert _model(context=0, warp=True)[0].noise_dim == 2 * (7 * 7 + 14 * 14)  # nothing to warp without a set


@pytest.mark.parametrize("context", [4, 0])
def test_the_global_latent_comes_after_the_warp_and_moves_the_whole_sample(context: int) -> None:
    """``global_latent``: its noise follows the warp's; its prior is N(0, I) without a set (and, zero-
    initialised, at first with one); a prior sample's global noise alone changes the whole image,
    and its KL is part of the ELBO."""
    model, params = _model(context=context, warp=True, glob=3)
    warp = 6 if context else 0
    assert model.noise_dim == warp + 3 + 2 * (7 * 7 + 14 * 14)
    batch = _batch(model)
    start = with_context(model, params, batch.support[0]) if context else params
    noise = torch.randn(2, model.noise_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moved = noise.clone()
    moved[:, warp : warp + 3] += 1.0  # the global latent's noise, nothing else
    ctx = start[CONTEXT] if context else None
    with torch.no_grad():
        a, b = model.sample_outputs(noise, context=ctx), model.sample_outputs(moved, context=ctx)
        changed = (a - b).abs().flatten(1).gt(1e-9).float().mean(1)
        assert bool((changed > 0.5).all()), changed  # most pixels of each image move
        if context:  # the set moves the global prior once it is trained; zero-initialised it is N(0, I)
            assert float(model.prior_g[-1].weight.abs().max()) == 0.0
        else:
            assert not hasattr(model, "prior_g")
        x = batch.query[0]
        _, levels = model._path(torch.zeros(2, model.noise_dim, dtype=torch.float64),
                                model._context_maps(ctx, 2), posterior=model._maps(model.encoder(x)))
        assert len(levels) == (2 if context else 1) + 2 and levels[-3][0].shape == (2, 3)  # warp, global, grids


@pytest.mark.parametrize(("warp", "glob"), [(False, 0), (True, 0), (True, 3)])
def test_iwae_is_a_bound_that_tightens_and_the_widened_proposal_is_one(warp: bool, glob: int) -> None:
    """One sample from q is the ELBO's scale; many give a lower (tighter) estimate, with q or with the
    widened mixture; a mixture whose every component has scale 1 is q itself (the same weights)."""
    model, params = _model(warp=warp, glob=glob)
    batch = _batch(model)
    start = with_context(model, params, batch.support[0])
    x = batch.query[0]
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(400, 2, model.noise_dim, generator=g, dtype=torch.float64)
    elbo = torch.stack([neg_elbo(model, start, x, e) for e in eps]).mean(0)
    one = iwae_nll(model, start, x, 1, torch.Generator().manual_seed(1))
    many = iwae_nll(model, start, x, 2000, torch.Generator().manual_seed(2))
    wide = iwae_nll(model, start, x, 2000, torch.Generator().manual_seed(3), proposal_scales=(1.0, 1.5, 2.0))
    assert bool((many < elbo - 1.0).all()) and bool((wide < elbo - 1.0).all()), (many, wide, elbo)
    assert float((one - elbo).abs().max()) < 0.2 * float(elbo.abs().max())
    e = eps[:8]
    plain = model(x, e, part="iwae", context=start[CONTEXT])
    ones = model(x, e, part="iwae", context=start[CONTEXT], proposal_scale=torch.ones(8, dtype=torch.float64))
    assert torch.allclose(plain, ones, atol=1e-9)


@pytest.mark.parametrize(("mode", "warp", "glob"), [("prior", False, 0), ("support", False, 0), ("prior", True, 3),
                                                   ("support", True, 3)])
def test_samples_are_images_that_depend_on_the_class(mode: str, warp: bool, glob: int) -> None:
    model, params = _model(warp=warp, glob=glob)
    batch = _batch(model)
    one = with_context(model, params, batch.support[0])
    two = with_context(model, params, batch.support[1])
    a = sample(model, one, 4, torch.Generator().manual_seed(0), mode, batch.support[0], 0.8)
    b = sample(model, two, 4, torch.Generator().manual_seed(0), mode, batch.support[1], 0.8)
    assert a.shape == (4, 1, 28, 28) and bool(((a >= 0) & (a <= 1)).all())
    assert float((a - b).abs().max()) > 1e-6


@pytest.mark.parametrize("mode", ["prior", "support"])
def test_the_spatial_temperature_scales_the_grids_noise_and_nothing_else(mode: str) -> None:
    """``eval.spatial_temperature``: the grids' noise at its own scale, the latents above them (the
    warp's, the global one) at the temperature. At the temperature itself it is the plain sample;
    at 0 it is the sample of the same draw with the grids' noise zeroed (each grid its mean given
    the latents above), the rest at the temperature; a model without grids refuses it."""
    model, params = _model(warp=True, glob=3)
    batch = _batch(model)
    start, support = with_context(model, params, batch.support[0]), batch.support[0]

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    plain = sample(model, start, 4, seeded(), mode, support, 0.8)
    assert torch.equal(plain, sample(model, start, 4, seeded(), mode, support, 0.8, 0.8))
    zero = sample(model, start, 4, seeded(), mode, support, 0.8, 0.0)
    assert float((plain - zero).abs().max()) > 1e-6
    g = seeded()
    noise = torch.randn(4, model.noise_dim, generator=g)
    pick = torch.randint(0, len(support), (4,), generator=g) if mode == "support" else None
    above = 6 + 3  # the warp's noise, then the global latent's
    noise[:, :above] *= 0.8
    noise[:, above:] = 0.0
    with torch.no_grad():
        by_hand = model.mean_image(model.sample_outputs(noise, mode=mode, context=start[CONTEXT], support=support,
                                                        pick=pick))
    assert torch.allclose(zero, by_hand, atol=1e-12)
    assert torch.equal(model.noise_scales(0.8, 0.0), torch.tensor([0.8] * above + [0.0] * (model.noise_dim - above)))
    conv = build_vae(VAEConfig(1, 28, 2, 4, "bernoulli", 2, 0), seed=0)
    with pytest.raises(ValueError, match="no spatial latents"):
        sample(conv, param_dict(conv), 2, seeded(), "prior", None, 1.0, 0.0)


def test_the_ladder_trains_checkpoints_and_generates(tmp_path, digits_prepared) -> None:  # noqa: ANN001
    """The project's path with ``model.arch: ladder`` (its context warp, as configs/omniglot.yaml, and a global latent):
    in-process meta-training (the batched context step), the checkpoint it restores from, and the
    adaptation rule evaluation and serving use."""
    from components.data.prepare import load_split
    from components.meta.adaptation import AdaptationRule
    from components.meta.trainer import load_learner, train_local
    from tests.conftest import make_params

    params = make_params("model.arch=ladder", "model.latent_dim=2", "model.width=8", "model.context_dim=4",
                         "model.context_warp=true", "model.global_latent=2", "meta.meta_batch_size=2", "meta.k_query=3",
                         "train.steps=4", "train.val_tasks=2",
                         "train.val_every=2", "train.report_every=2", "train.checkpoint_every=2",
                         "eval.adapt_steps=1", "eval.finetune_lrs=[0.0, 0.001]", "eval.feature_steps=20",
                         "eval.min_extractor_accuracy=0", "eval.samples_per_class=8", "train.pretrain_steps=3",
                         "eval.nll_samples=4", "eval.nll_max_images=2", "eval.repeats=2", "eval.finetune_steps=2")
    result = train_local(params, digits_prepared, tmp_path, progress=False)
    restored = load_learner(result.checkpoint)
    assert type(restored.learner.model).__name__ == "LadderVAE" and restored.state.step == 4
    support = torch.from_numpy(load_split(digits_prepared, "test").images[:5])
    rule = AdaptationRule.from_params(params)
    images = rule.generate(restored.learner.model, restored.learner.params(), None, support, 6,
                           torch.Generator().manual_seed(0))
    assert images.shape == (6, *support.shape[1:]) and bool(torch.isfinite(images).all())
    assert [h["val_loss"] for h in result.history if "val_loss" in h]
    # the experiment that compares amortised inference with context steps runs on this checkpoint
    script = Path(__file__).parents[3] / "experiments" / "context_steps" / "run.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[2])}
    assert "--checkpoint" in subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                            env=env, check=True).stdout
    done = subprocess.run([sys.executable, str(script), "--checkpoint", str(result.checkpoint), "--prepared",
                           str(digits_prepared), "--steps", "0", "1", "--lrs", "1", "--classes", "2", "--images", "2",
                           "--samples", "3", "--finetune-lrs", "0", "1e-3", "--finetune-steps", "2",
                           "--set-finetune", "joint", "leave_one_out"], capture_output=True, text=True, env=env, check=True)
    report = json.loads(done.stdout)
    tuned = [f", fine-tuned 2 steps at lr 0.001 ({mode})" for mode in ("joint", "leave_one_out")]
    assert set(report["nll"]) == {f"{key}{suffix}" for key in ("amortised", "1 steps at lr 1") for suffix in ["", *tuned]}
    assert all(math.isfinite(v["mean"]) for v in report["nll"].values())
    # the experiment that scores its meta-val FID and copy rate at each sampling temperature
    from components.evaluation.evaluate import build_domain_features

    build_domain_features(params, digits_prepared, tmp_path / "features")
    script = Path(__file__).parents[3] / "experiments" / "sampling_temperature" / "run.py"
    done = subprocess.run([sys.executable, str(script), "--checkpoint", str(result.checkpoint), "--prepared",
                           str(digits_prepared), "--features", str(tmp_path / "features"), "--temperatures", "1.0",
                           "0.5", "--choice-classes", "1", "--spatial-temperature", "0"],
                          capture_output=True, text=True, env=env, check=True)
    report = json.loads(done.stdout)
    assert [(c["lr"], c["temperature"]) for c in report["candidates"]] == [(0.0, 1.0), (0.0, 0.5)]
    assert all(math.isfinite(c["fid"]) and 0 <= c["copy_rate"] <= 1 and 0 <= c["copy_bound"] <= 1 for c in report["candidates"])
    assert report["chosen"]["temperature"] in (1.0, 0.5) and report["meta_val_classes"] == 1  # --choice-classes
    assert report["spatial_temperature"] == 0.0
    # the experiment that scores the pretrain baseline's held-out NLL from other initialisations
    script = Path(__file__).parents[3] / "experiments" / "baseline_seeds" / "run.py"
    evaluated = tmp_path / "eval.json"  # the lrs an evaluation chose for each model's likelihood
    evaluated.write_text(json.dumps({"rows": [{"model": "pretrain", "nll_lr": 0.001}, {"model": "meta", "nll_lr": 0.0}]}))
    done = subprocess.run([sys.executable, str(script), "--checkpoint", str(result.checkpoint), "--prepared",
                           str(digits_prepared), "--features", str(tmp_path / "features"), "--report", str(evaluated),
                           "--seeds", "0", "1", "--meta"], capture_output=True, text=True, env=env, check=True)
    report = json.loads(done.stdout)
    seeds = report["pretrain"]
    assert set(seeds) == {"0", "1"} and report["repeats"] == 2 and report["meta"]["lr"] == 0.0
    assert all(math.isfinite(v["nll_nats"]) and v["bits_per_dim"] > 0 and v["lr"] == 0.001 for v in seeds.values())
    assert seeds["0"]["nll_nats"] != seeds["1"]["nll_nats"]  # another initialisation, another baseline
    assert report["pretrain_spread_bits_per_dim"] == pytest.approx(
        abs(seeds["0"]["bits_per_dim"] - seeds["1"]["bits_per_dim"]))
    assert len(list(result.checkpoint.parent.glob("pretrain-*.pt"))) == 2  # each cached as the evaluation caches it


def test_the_set_gain_experiment_trains_both_models_and_scores_meta_val(digits_prepared) -> None:  # noqa: ANN001
    """experiments/set_gain: the set-conditioned ladder and the same ladder without the set, a few
    steps each on meta-train classes, then both scored on meta-val (finite NLLs, the gain their
    difference)."""
    script = Path(__file__).parents[3] / "experiments" / "set_gain" / "run.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[2])}
    assert "--prepared" in subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                          env=env, check=True).stdout
    done = subprocess.run([sys.executable, str(script), "--prepared", str(digits_prepared), "--binarize", "--steps", "2",
                           "--batch", "2", "--queries", "2", "--width", "8", "--latent-dim", "2", "--context-dim", "4",
                           "--classes", "2", "--images", "2", "--samples", "3", "--also-train"],
                          capture_output=True, text=True, env=env, check=True)
    report = json.loads(done.stdout)
    assert report["set"]["steps"] == report["plain"]["steps"] == 2 and report["set"]["classes"] == 2
    assert all(math.isfinite(report[m]["nll_nats"]) and report[m]["bits_per_dim"] > 0 for m in ("set", "plain"))
    assert report["gain_nats"] == pytest.approx(report["plain"]["nll_nats"] - report["set"]["nll_nats"])
    assert report["meta_train_gain_nats"] == pytest.approx(
        report["plain"]["meta_train"]["nll_nats"] - report["set"]["meta_train"]["nll_nats"])
