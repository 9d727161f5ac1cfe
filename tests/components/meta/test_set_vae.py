"""The set-conditioned VAE: permutation invariance, exact meta-gradients on the context path, a
context that carries the class, and a served model that samples exactly what was evaluated."""

from __future__ import annotations

import re
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.prepare import Split
from components.meta.adaptation import AdaptationRule
from components.meta.algorithms import AlgoConfig, adapt_keys, key_shape, meta_gradients
from tests.components.meta.reference_loop import meta_gradients_loop
from components.meta.learner import MetaLearner
from components.meta.tasks import TaskBatch, TaskSampler
from components.models.vae import CONTEXT, MEMORY, VAEConfig, build_vae, iwae_nll, neg_elbo, param_dict, with_context
from tests.conftest import make_params


def _model(context: int = 4, likelihood: str = "bernoulli", attention: bool = False):  # noqa: ANN202
    model = build_vae(VAEConfig(1, 28, 3, 4, likelihood, 2, context, support_attention=attention), seed=0).double()
    with torch.no_grad():  # FiLM, the prior and the attention's output start at zero: move them so every path is exercised
        for name, p in model.named_parameters():
            if name.startswith(("film.", "prior_head.", "attn_out.")):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return model, param_dict(model)


def _batch(b: int = 2, k: int = 3, q: int = 2, steps: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    return TaskBatch(torch.rand(b, k, 1, 28, 28, generator=g, dtype=torch.float64),
                     torch.rand(b, q, 1, 28, 28, generator=g, dtype=torch.float64),
                     torch.randn(b, steps, k + q, 3, generator=g, dtype=torch.float64),
                     torch.randn(b, q, 3, generator=g, dtype=torch.float64), tuple(range(b)))


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "reptile"])
def test_context_dropout_is_the_same_gradient_in_every_implementation(algo: str, attention: bool) -> None:
    """A task that starts from the null context (meta.context_dropout) gets the same meta-gradient
    from the batched step, vmap and the loop; and it is a different gradient from the full context's.
    With support attention, the memory is dropped with the context."""
    from dataclasses import replace

    model, params = _model(attention=attention)
    keys = adapt_keys(model, "all" if algo == "reptile" else "context")
    cfg = AlgoConfig(algo, 2, 0.3, keys)  # type: ignore[arg-type]
    lrs = {k: torch.full(key_shape(model, k), 0.3, dtype=torch.float64) for k in keys} if algo == "metasgd" else None
    dropped = replace(_batch(b=3), keep_context=torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    impls = ["vmap"] + (["batched"] if algo != "reptile" else [])
    results = {impl: meta_gradients(model, params, lrs, dropped, cfg, impl=impl) for impl in impls}
    loss_ref, g_ref = meta_gradients_loop(model, params, lrs, dropped, cfg)
    for impl, (loss, g) in results.items():
        assert abs(float(loss - loss_ref)) <= 1e-10, impl
        assert max(float((g[k] - g_ref[k]).abs().max()) for k in g) <= 1e-5, impl
    loss_full, _ = meta_gradients_loop(model, params, lrs, _batch(b=3), cfg)
    assert abs(float(loss_full - loss_ref)) > 1e-8


def test_sampler_drops_contexts_at_the_configured_rate() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((6 * 12, 1, 28, 28), dtype=np.float32)
    split = Split(images, np.repeat(np.arange(6), 12), [f"c{i}" for i in range(6)])
    plain = TaskSampler(split, 5, 5, 4, 1, seed=0)
    dropping = TaskSampler(split, 5, 5, 4, 1, seed=0, context_dropout=0.5)
    a, b = plain.sample(3, 400), dropping.sample(3, 400)
    assert a.keep_context is None and torch.equal(a.support, b.support) and torch.equal(a.eps_query, b.eps_query)
    assert 0.4 < 1 - float(b.keep_context.mean()) < 0.6


def test_classes_rotate_until_the_upright_steps_and_validation_is_upright_with_full_context() -> None:
    """meta.upright_steps: tasks of the last N steps are upright (the images as stored), earlier
    ones rotated by k x 90 degrees; the validation sampler never rotates nor drops a context."""
    from components.meta.trainer import make_sampler
    from tests.conftest import make_params

    rng = np.random.default_rng(0)
    images = rng.random((6 * 12, 1, 28, 28), dtype=np.float32)
    split = Split(images, np.repeat(np.arange(6), 12), [f"c{i}" for i in range(6)])
    stored = {tuple(np.round(img.ravel()[:8], 6)) for img in images}

    def upright(batch) -> list[bool]:  # noqa: ANN001
        return [tuple(np.round(t[0].numpy().ravel()[:8], 6)) in stored for t in batch.support]

    params = make_params("model.binarize=false", "meta.rotate_classes=true", "meta.upright_steps=4", "meta.context_dropout=0.5", "meta.k_query=5",
                         "train.steps=10")
    train = make_sampler(params, split, seed=0)
    early = [ok for step in range(6) for ok in upright(train.sample(step, 8))]
    late = [ok for step in range(6, 10) for ok in upright(train.sample(step, 8))]
    assert all(late) and not all(early) and any(early)  # k = 0 leaves a quarter of the early ones upright
    val = make_sampler(params, split, seed=1, training=False)
    for step in range(6):
        batch = val.sample(step, 8)
        assert all(upright(batch)) and batch.keep_context is None


def test_context_is_permutation_invariant() -> None:
    model, params = _model()
    support = _batch().support[0]
    a = with_context(model, params, support)[CONTEXT]
    b = with_context(model, params, support[torch.tensor([2, 0, 1])])[CONTEXT]
    assert a.shape == (4,)
    assert torch.allclose(a, b, atol=1e-12)
    assert not torch.allclose(a, with_context(model, params, _batch().support[1])[CONTEXT])


def test_support_attention_is_permutation_invariant_and_reads_the_supports() -> None:
    """The decoder's attention over the supports' feature maps: the same ELBO for shuffled supports,
    a different one for another class's supports; the memory holds one token per support and position."""
    model, params = _model(attention=True)
    batch = _batch(k=3)
    support, x, eps = batch.support[0], batch.query[0], batch.eps_query[0]
    start = with_context(model, params, support)
    assert start[MEMORY].shape == (3 * model.base**2, 2 * 4)
    shuffled = with_context(model, params, support[torch.tensor([2, 0, 1])])
    a, b = neg_elbo(model, start, x, eps), neg_elbo(model, shuffled, x, eps)
    assert torch.allclose(a, b, atol=1e-10)
    other = {**start, MEMORY: with_context(model, params, batch.support[1])[MEMORY]}  # same context, other memory
    assert float((neg_elbo(model, other, x, eps) - a).abs().max()) > 1e-6


@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile", "metasgd"])
@pytest.mark.parametrize(("scope", "attention"), [("context", False), ("film", False), ("all", False), ("all", True)])
def test_context_path_vmap_equals_loop(algo: str, scope: str, attention: bool) -> None:
    model, params = _model(attention=attention)
    keys = adapt_keys(model, "all" if algo == "reptile" else scope)
    cfg = AlgoConfig(algo, 2, 0.3, keys)  # type: ignore[arg-type]
    lrs = {k: torch.full(key_shape(model, k), 0.3, dtype=torch.float64) for k in keys} if algo == "metasgd" else None
    l1, g1 = meta_gradients(model, params, lrs, _batch(), cfg, impl="vmap")
    l2, g2 = meta_gradients_loop(model, params, lrs, _batch(), cfg)
    assert set(g1) == set(g2)
    assert abs(float(l1 - l2)) <= 1e-10
    assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) <= 1e-5
    assert float(g1["set_head.3.weight"].abs().max()) > 0  # the set encoder is trained by every algorithm


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd"])
def test_batched_context_step_equals_loop(algo: str, attention: bool) -> None:
    """The batched meta-step (all tasks in one batch, a context per task) is the loop's gradient."""
    model, params = _model(attention=attention)
    keys = adapt_keys(model, "context")
    cfg = AlgoConfig(algo, 2, 0.3, keys)  # type: ignore[arg-type]
    lrs = {CONTEXT: torch.linspace(0.1, 0.5, 4, dtype=torch.float64)} if algo == "metasgd" else None
    b = _batch(b=3)
    l1, g1 = meta_gradients(model, params, lrs, b, cfg, impl="batched")
    l2, g2 = meta_gradients_loop(model, params, lrs, b, cfg)
    assert set(g1) == set(g2)
    assert abs(float(l1 - l2)) <= 1e-10
    assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) <= 1e-8
    assert float(g1["set_head.3.weight"].abs().max()) > 0
    with pytest.raises(ValueError, match="batched meta-step"):
        meta_gradients(model, params, None, b, AlgoConfig("maml", 2, 0.3, adapt_keys(model, "film")), impl="batched")


@pytest.mark.parametrize("attention", [False, True])
def test_second_order_context_maml_matches_finite_differences(attention: bool) -> None:
    model, params = _model(attention=attention)
    cfg = AlgoConfig("maml", 2, 0.5, adapt_keys(model, "context"))
    b = _batch()
    _, g = meta_gradients(model, params, None, b, cfg)  # the training path: batched
    gen = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    h = 1e-5

    def loss_at(sign: float) -> float:
        p = {k: v + sign * h * direction[k] for k, v in params.items()}
        return float(meta_gradients(model, p, None, b, cfg, impl="vmap")[0])

    numeric = (loss_at(1) - loss_at(-1)) / (2 * h)
    analytic = sum(float((g[k] * direction[k]).sum()) for k in params)
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def shapes_split(n_classes: int, per_class: int, seed: int) -> Split:
    """Synthetic classes: each a random 3x3 arrangement of filled cells, jittered by a pixel per image."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(n_classes):
        cells = rng.random((3, 3)) < 0.45
        base = np.kron(cells, np.ones((8, 8)))
        for _ in range(per_class):
            img = np.zeros((28, 28), dtype=np.float32)
            dy, dx = rng.integers(0, 5, 2)
            img[dy : dy + 24, dx : dx + 24] = base
            images.append(img[None])
            labels.append(c)
    return Split(np.stack(images), np.array(labels), [f"shape{c}" for c in range(n_classes)])


@pytest.mark.slow
def test_trained_context_lowers_heldout_nll_of_unseen_classes() -> None:
    torch.manual_seed(0)
    params = make_params("model.width=8", "model.latent_dim=4", "model.context_dim=8", "meta.algorithm=maml",
                         "meta.adapt_scope=context", "meta.inner_steps=1", "meta.k_query=5", "meta.outer_lr=0.003")
    train, test = shapes_split(40, 12, seed=0), shapes_split(8, 12, seed=1)
    model = build_vae(VAEConfig(1, 28, 4, 8, "bernoulli", 8, 8), seed=0)
    learner = MetaLearner(model, params.meta)
    sampler = TaskSampler(train, 5, 5, 4, 1, seed=0)
    for step in range(250):
        learner.meta_step(sampler.sample(step, 4))
    rule = AdaptationRule(steps=1, inner_lr=params.meta.inner_lr, scope="context", learned_lrs=False,
                          sampling="prior", temperature=1.0)
    own, other = [], []
    for c in range(8):
        x = torch.from_numpy(test.images[test.labels == c])
        wrong = torch.from_numpy(test.images[test.labels == (c + 1) % 8][:5])
        gen = torch.Generator().manual_seed(c)
        right_ctx = rule.adapt(model, learner.params(), None, x[:5], gen)
        wrong_ctx = rule.adapt(model, learner.params(), None, wrong, gen)
        own.append(float(iwae_nll(model, right_ctx, x[5:], 20, torch.Generator().manual_seed(0)).mean()))
        other.append(float(iwae_nll(model, wrong_ctx, x[5:], 20, torch.Generator().manual_seed(0)).mean()))
    assert np.mean(own) < np.mean(other) - 5.0, (np.mean(own), np.mean(other))


_SERVED_IMPORTS = """
import ast, sys
from importlib.metadata import packages_distributions
import components.serving.generator_pyfunc
dists, out = packages_distributions(), set()
for name, mod in list(sys.modules.items()):
    if name.startswith("components") and getattr(mod, "__file__", None):
        for node in ast.walk(ast.parse(open(mod.__file__).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"components", "__future__"}:
                out.add(",".join(sorted(d.lower() for d in dists[top])))  # the distributions that ship it
print(" ".join(sorted(out)))
"""


def test_served_model_samples_what_the_evaluation_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Meta-SGD with eval.inner_lr set and a fine-tuning lr: the protocol's class job and the
    registered pyfunc adapt by the same rule and, for the same support and seed, give the same
    samples in every mode."""
    from dataclasses import replace

    import mlflow

    from components.evaluation.protocol import ClassJob, adapt_class, class_seed, draw_episode
    from components.meta.generators import MetaGenerator
    from components.registry import log_generator

    params = make_params("model.width=8", "model.context_dim=6", "meta.algorithm=metasgd", "eval.inner_lr=0.05",
                         "eval.adapt_steps=2", "eval.samples_per_class=6", "eval.temperatures=[0.7]")
    learner = MetaLearner(build_vae(VAEConfig(1, 28, params.model.latent_dim, 8, "bernoulli", 8, 6), seed=0),
                          params.meta)
    rule = replace(AdaptationRule.from_params(params), finetune_lr=1e-3)  # as if chosen on meta-val
    assert rule.learned_lrs is False and rule.inner_lr == 0.05 and rule.temperature == 0.7
    assert rule.finetune_steps == params.eval.finetune_steps > 0
    test = shapes_split(3, 10, seed=2)
    episode = draw_episode(test, params.meta.k_shot, seed=11)
    support = torch.from_numpy(test.images[episode.supports[0]])
    seed = class_seed(11, 0)  # what the protocol seeds class 0 of the repeat seeded 11 with
    job = ClassJob(0, support, None, 6, (("prior", 0.7), ("support", 0.7)), 1, (1.0,), seed, 0)
    evaluated = adapt_class([MetaGenerator(learner, rule)], job).samples

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    run_id = mlflow.MlflowClient().create_run(mlflow.create_experiment("t", (tmp_path / "art").as_uri())).info.run_id
    from components.serving.data_facts import data_facts

    model_uri = log_generator(run_id, learner, rule, params, support.numpy(), data_facts(test.images))
    served = mlflow.pyfunc.load_model(model_uri)
    for mode in ("prior", "support"):
        out = served.predict(support.numpy(), params={"n": 6, "seed": seed, "sampling": mode})
        assert np.array_equal(out, evaluated[(mode, 0.7)].numpy()), mode
    assert not np.array_equal(evaluated[("prior", 0.7)].numpy(), evaluated[("support", 0.7)].numpy())
    assert "metagen" not in {r.name for r in caplog.records if r.levelname == "WARNING"}
    served.predict(1.0 - support.numpy(), params={"n": 2})  # the same shapes, inverted: a warning
    assert any("dark on a light background" in r.getMessage() for r in caplog.records), caplog.text
    # the logged requirements hold every third-party module the served code imports (it failed
    # outside the project with `No module named 'rich'`)
    imported = subprocess.run([sys.executable, "-c", _SERVED_IMPORTS], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parents[3], timeout=120).stdout.split()
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl"))
    required = {re.split(r"[=<>]", line)[0].lower() for line in Path(local, "requirements.txt").read_text().split()}
    missing = [shipped for shipped in imported if not set(shipped.split(",")) & required]
    assert imported and not missing, missing
    # every request is checked and refused with its reason (over REST: a 400 with that message)
    from mlflow.exceptions import MlflowException

    for bad_input, bad_params, reason in [
        (support.numpy(), {"n": 0}, "params.n: 0; expected an integer from 1 to 1024"),
        (support.numpy(), {"n": 100_000}, "params.n: 100000"),
        (support.numpy(), {"sampling": "both"}, "params.sampling: 'both'"),
        (support.numpy() * 255, {}, "pixel values must be finite and in [0, 1]"),
        (np.full_like(support.numpy(), np.nan), {}, "pixel values must be finite"),
        (support.numpy()[:, :, :20], {}, "Shape of input (5, 1, 20, 28) does not match expected shape (-1, 1, 28, 28)"),
    ]:
        with pytest.raises(MlflowException, match=re.escape(reason)) as err:
            served.predict(bad_input, params=bad_params)
        assert err.value.get_http_status_code() == 400


def test_the_rule_fine_tunes_after_its_context_steps_only_when_asked() -> None:
    """lr 0 is exactly the context-only rule (what training validates); lr > 0 then moves every
    weight by Adam on the supports, as the `pretrain` baseline is fine-tuned, and lowers their loss."""
    from dataclasses import replace

    from components.models.vae import per_pixel_loss

    model = build_vae(VAEConfig(1, 28, 4, 8, "bernoulli", 8, 6), seed=0)
    params = {k: v.detach() for k, v in model.named_parameters()}
    support = torch.from_numpy(shapes_split(1, 5, seed=3).images)
    rule = AdaptationRule(steps=2, inner_lr=1.0, scope="context", learned_lrs=False, sampling="support",
                          temperature=1.0, finetune_steps=10, finetune_lr=0.0)
    plain = rule.adapt(model, params, None, support, torch.Generator().manual_seed(0))
    context_only = replace(rule, finetune_steps=0).adapt(model, params, None, support, torch.Generator().manual_seed(0))
    assert all(torch.equal(plain[k], context_only[k]) for k in plain)
    tuned = replace(rule, finetune_lr=3e-3).adapt(model, params, None, support, torch.Generator().manual_seed(0))
    assert not torch.equal(tuned["decoder.0.weight"], params["decoder.0.weight"])
    with torch.no_grad():  # where validation grids sample: the same adaptation
        quiet = replace(rule, finetune_lr=3e-3).adapt(model, params, None, support, torch.Generator().manual_seed(0))
    assert all(torch.equal(tuned[k], quiet[k]) for k in tuned)
    eps = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert float(per_pixel_loss(model, tuned, support, eps)) < float(per_pixel_loss(model, plain, support, eps))


def test_fused_adam_fine_tuning_is_the_per_tensor_loop() -> None:
    """Fine-tuning runs Adam's fused kernel: the same weights as torch's per-tensor loop, up to
    float rounding, after 30 steps on a context and every weight."""
    from components.meta.adaptation import finetune

    model, params = _model(attention=True)
    support = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(5), dtype=torch.float64).round()
    start = with_context(model, params, support)
    fused = finetune(model, start, support, 30, 1e-3, torch.Generator().manual_seed(6), fused=True)
    loop = finetune(model, start, support, 30, 1e-3, torch.Generator().manual_seed(6), fused=False)
    assert not torch.equal(fused["decoder.0.weight"], start["decoder.0.weight"])
    assert torch.equal(fused[MEMORY], start[MEMORY])  # data, never tuned
    for k in loop:
        torch.testing.assert_close(fused[k], loop[k], rtol=1e-9, atol=1e-10)
