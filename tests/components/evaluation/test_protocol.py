"""The few-shot protocol: deterministic, refuses NaNs, writes the table and the pictures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.data.prepare import load_split, read_manifest
from components.errors import MetagenError, ParamsError
from components.evaluation.evaluate import build_domain_features, evaluate, load_extractor
from components.evaluation.bootstrap import load_units
from components.evaluation.protocol import Protocol, evaluate_generators
from components.meta.adaptation import AdaptationRule
from components.meta.generators import FinetuneGenerator, MetaGenerator
from components.meta.trainer import build_learner, vae_config
from components.models.vae import ConvVAE, param_dict
from tests.conftest import make_params

TINY = [
    "model.width=8", "eval.repeats=2", "eval.samples_per_class=16", "eval.kid_subsets=3", "eval.kid_subset_size=16",
    "eval.augment_steps=10", "eval.finetune_lrs=[0.0, 0.001]", "eval.finetune_steps=2", "eval.scratch_steps=3",
    "train.pretrain_steps=5", "eval.feature_steps=20", "eval.adapt_steps=2", "eval.min_extractor_accuracy=0",
    "eval.nll_samples=4", "eval.nll_choice_samples=4",
]


@pytest.fixture
def setup(tmp_path: Path, digits_prepared: Path):  # noqa: ANN201
    params = make_params(*TINY)
    test = load_split(digits_prepared, "test")
    learner = build_learner(params.meta, vae_config(params.model, test), seed=0)
    build_domain_features(params, digits_prepared, tmp_path / "features")
    extractor, _ = load_extractor(params, tmp_path / "features")
    protocol = Protocol(params.eval, params.meta.k_shot, read_manifest(digits_prepared)["splits"]["test"]["sha256"])
    feats = extractor.features(torch.from_numpy(test.images))
    return params, test, learner, extractor, protocol, feats


def test_protocol_is_deterministic(setup) -> None:  # noqa: ANN001
    params, test, learner, extractor, protocol, feats = setup
    gen = MetaGenerator(learner, AdaptationRule.from_params(params))
    [a] = evaluate_generators([gen], test, feats, extractor, protocol)
    [b] = evaluate_generators([gen], test, feats, extractor, protocol)
    assert [len(units) for units in a.features["support"]] == [len(test.classes)] * params.eval.repeats
    a, b = a.rows, b.rows
    for ra, rb in zip(a, b, strict=True):
        for key in ("fid_mean", "kid_mean", "nll_mean", "precision", "copy_rate", "aug_acc_mean"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
    assert {r["sampling"] for r in a} == {"prior", "support"}


def test_protocol_digest_depends_on_protocol_not_model(setup) -> None:  # noqa: ANN001
    params, _, _, _, protocol, _ = setup
    other = Protocol(make_params(*TINY, "eval.samples_per_class=32").eval, params.meta.k_shot, protocol.test_sha256)
    assert other.digest != protocol.digest
    spatial = Protocol(make_params(*TINY, "model.arch=ladder", "eval.spatial_temperature=0").eval, params.meta.k_shot,
                       protocol.test_sha256)
    assert spatial.digest != protocol.digest  # unset it is absent: the digests made before it hold
    same = Protocol(make_params(*TINY, "eval.adapt_steps=9").eval, params.meta.k_shot, protocol.test_sha256)
    assert same.digest == protocol.digest


def test_nan_generator_is_named(setup) -> None:  # noqa: ANN001
    _, test, learner, extractor, protocol, feats = setup
    broken = ConvVAE(replace(learner.model.cfg, context_dim=0))  # a plain VAE, as the baselines are
    start = {k: torch.full_like(v, float("nan")) for k, v in param_dict(broken).items()}
    gen = FinetuneGenerator("broken-vae", broken, start, steps=0, lr=0.0)
    with pytest.raises(MetagenError, match="broken-vae.*NaN"):
        evaluate_generators([gen], test, feats, extractor, protocol)


def test_evaluate_writes_table_and_pictures(tmp_path: Path, digits_prepared: Path) -> None:
    params = make_params(*TINY, "eval.temperatures=[1.0, 0.5]")
    test = load_split(digits_prepared, "test")
    learner = build_learner(params.meta, vae_config(params.model, test), seed=0)
    history = [{"step": 5, "train_loss": 0.5, "val_loss": 300.0, "val_loss_unadapted": 310.0}]
    build_domain_features(params, digits_prepared, tmp_path / "features")
    out = evaluate(learner, AdaptationRule.from_params(params), params, digits_prepared, tmp_path / "reports",
                   tmp_path / "features", tmp_path / "cache",
                   history=history)
    report = json.loads(out.report_path.read_text())
    models = {(r["model"], r["sampling"]) for r in report["rows"]}
    assert models == {("meta", "prior"), ("meta", "support"), ("pretrain", "prior"), ("pretrain", "support"),
                      ("scratch", "prior"), ("scratch", "support"), ("support_replay", "replay")}
    selection = report["selection"]  # name -> mode -> settings: each baseline chosen in each mode
    assert set(selection) == {"meta", "pretrain", "scratch"}
    assert set(selection["pretrain"]) == set(selection["scratch"]) == {"prior", "support"}
    for mode in ("prior", "support"):
        assert selection["scratch"][mode]["lr"] == 0.001 and selection["pretrain"][mode]["lr"] in (0.0, 0.001)
        assert {(c["lr"], c["temperature"]) for c in selection["pretrain"][mode]["candidates"]} == {
            (0.0, 1.0), (0.0, 0.5), (0.001, 1.0), (0.001, 0.5)}
    # the meta-model starts trained: no fine-tuning (lr 0) is one of its candidates; it is chosen in its served mode
    [served] = selection["meta"]
    assert served == params.eval.sampling
    meta_choice = selection["meta"][served]
    assert {(c["lr"], c["temperature"]) for c in meta_choice["candidates"]} == {
        (0.0, 1.0), (0.0, 0.5), (0.001, 1.0), (0.001, 0.5)}
    # the rule the report (and so the registry) carries is the one that was scored, as chosen
    assert report["adaptation"]["temperature"] == meta_choice["temperature"]
    assert report["adaptation"]["finetune_lr"] == meta_choice["lr"]
    assert report["adaptation"]["finetune_steps"] == params.eval.finetune_steps
    for row in report["rows"]:
        if row["model"] in ("pretrain", "scratch") or (row["model"], row["sampling"]) == ("meta", served):
            chosen = selection[row["model"]][row["sampling"]]
            assert (row["adapt_lr"], row["temperature"]) == (chosen["lr"], chosen["temperature"]), row
        elif row["model"] == "meta":  # its other mode: at its served settings
            assert (row["adapt_lr"], row["temperature"]) == (meta_choice["lr"], meta_choice["temperature"])
    replay = next(r for r in report["rows"] if r["model"] == "support_replay")
    assert replay["copy_rate"] == 1.0
    for row in report["rows"]:
        assert {"model", "sampling", "fid_mean", "kid_mean", "nll_mean", "precision", "recall", "density", "coverage",
                "copy_rate", "aug_acc_mean"} <= set(row)
        assert (row["nll_mean"] is None) == (row["model"] == "support_replay")
    assert report["extractor"]["heldout_accuracy"] is not None
    # every other row compared with the gated meta row, with the interval of the difference
    gated = next(r for r in report["rows"] if (r["model"], r["sampling"]) == ("meta", params.eval.sampling))
    assert {(c["model"], c["sampling"]) for c in report["comparisons"]} == models - {("meta", "prior"), ("meta", "support")}
    for c in report["comparisons"]:
        other = next(r for r in report["rows"] if (r["model"], r["sampling"]) == (c["model"], c["sampling"]))
        assert c["fid"] == pytest.approx(gated["fid_mean"], rel=1e-6)
        assert c["other_fid"] == pytest.approx(other["fid_mean"], rel=1e-6)
        assert c["low"] <= c["high"]
    units = load_units(out.units_path)
    assert (units.extractor, units.protocol) == (report["extractor"]["digest"], report["protocol"]["digest"])
    assert len(units.model) == len(units.real) == params.eval.repeats
    assert "| meta | support |" in out.markdown_path.read_text()
    names = {p.name for p in out.pictures}
    assert {"grid_meta_support.png", "grid_pretrain_prior.png", "fid.png", "loss.png", "selection.png"} <= names
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*-test-*.npz"))) == 2  # one per repeat, shared by all models
    with Image.open(tmp_path / "reports" / "grid_meta_support.png") as img:
        assert img.size[0] > 28 * 10


def test_a_weak_extractor_stops_the_evaluation(tmp_path: Path, digits_prepared: Path) -> None:
    params = make_params(*TINY[:-2], "eval.feature_steps=2", "eval.min_extractor_accuracy=0.9")
    build_domain_features(params, digits_prepared, tmp_path / "features")
    with pytest.raises(MetagenError, match=r"held-out accuracy 0\.\d+ is below eval.min_extractor_accuracy 0.9.*dvc repro"):
        load_extractor(params, tmp_path / "features")


def test_a_missing_extractor_names_the_dvc_stage(tmp_path: Path) -> None:
    with pytest.raises(MetagenError, match="dvc repro features"):
        load_extractor(make_params(), tmp_path / "nothing-here")


def test_scratch_never_chooses_an_untrained_network(setup, digits_prepared: Path) -> None:  # noqa: ANN001
    """lr 0 leaves `pretrain` as trained (a fair candidate) but `scratch` as its random init: the
    lr choice offers 0 to the first only, so `scratch` cannot win it by not learning (it did on
    the digits, where every lr > 0 copied on meta-val)."""
    from components.evaluation.protocol import choose_settings

    params, _, learner, extractor, protocol, _ = setup
    plain = ConvVAE(replace(learner.model.cfg, context_dim=0))
    gens = [FinetuneGenerator("pretrain", plain, param_dict(plain), steps=2),
            FinetuneGenerator("scratch", plain, None, steps=3)]
    val = load_split(digits_prepared, "val")
    val_feats = extractor.features(torch.from_numpy(val.images))
    (pretrain, p_scores), (scratch, s_scores) = (by_mode["support"] for by_mode in choose_settings(
        gens, val, val_feats, extractor, protocol, [0.0, 0.001], ("support",), max_copy_rate=0.0))
    assert {c["lr"] for c in p_scores} == {0.0, 0.001} and pretrain.lr in (0.0, 0.001)
    assert {c["lr"] for c in s_scores} == {0.001} and scratch.lr == 0.001


def test_the_choice_scores_the_generator_it_chooses(setup, digits_prepared: Path) -> None:  # noqa: ANN001
    """Each (lr, temperature) candidate's FID and copy rate on meta-val are those of the generator
    set to it (the temperatures share one adaptation, not a different draw), and the choice is the
    lowest FID among the candidates that do not copy, or the least copying one when all copy."""
    from components.evaluation.protocol import choose_settings, run_generators

    params, _, learner, extractor, _, _ = setup
    ev = make_params(*TINY, "eval.temperatures=[1.0, 0.3]").eval
    protocol = Protocol(ev, params.meta.k_shot, "val")
    plain = ConvVAE(replace(learner.model.cfg, context_dim=0))
    pretrain = FinetuneGenerator("pretrain", plain, param_dict(plain), steps=2)
    val = load_split(digits_prepared, "val")
    val_feats = extractor.features(torch.from_numpy(val.images))
    for limit in (-1.0, 0.0, 1.0):  # -1: every candidate copies
        [by_mode] = choose_settings([pretrain], val, val_feats, extractor, protocol, [0.0, 0.001], ("support",),
                                    max_copy_rate=limit)
        chosen, table = by_mode["support"]
        honest = [c for c in table if c["copy_rate"] <= limit]
        best = (min(honest, key=lambda c: c["fid"]) if honest  # every candidate copies: the one that copies least
                else min(table, key=lambda c: (c["copy_rate"], c["fid"])))
        assert (chosen.lr, chosen.temperature) == (best["lr"], best["temperature"])
    for cand in table:
        alone = pretrain.with_settings(cand["lr"], cand["temperature"])
        [[res]] = run_generators([alone], val, val_feats, extractor, protocol, [ev.seed + 7], ("support",),
                                 score_aug=False, score_nll=False)
        assert res.metrics[("support", cand["temperature"])]["fid"] == pytest.approx(cand["fid"], rel=1e-9)
    fids = {c["temperature"]: c["fid"] for c in table if c["lr"] == 0.001}
    assert fids[1.0] != fids[0.3]  # the temperature reaches the samples


def test_each_sampling_mode_is_judged_at_the_settings_chosen_in_it(setup, digits_prepared: Path) -> None:  # noqa: ANN001
    """A baseline's prior and support sampling are chosen each on its own meta-val table (its prior
    rows were once sampled at the settings its support sampling chose), and scored at them: the
    rows of modes sharing an lr (one adaptation, each mode at its temperature) are those of the
    generator set to that mode's settings alone."""
    from components.evaluation.evaluate import score_baselines
    from components.evaluation.protocol import choose_settings
    from components.meta.generators import MODES

    params, test, learner, extractor, protocol, feats = setup
    ev = make_params(*TINY, "eval.temperatures=[1.0, 0.3]").eval
    choice_protocol = Protocol(ev, params.meta.k_shot, "val")
    plain = ConvVAE(replace(learner.model.cfg, context_dim=0))
    pretrain = FinetuneGenerator("pretrain", plain, param_dict(plain), steps=2)
    val = load_split(digits_prepared, "val")
    val_feats = extractor.features(torch.from_numpy(val.images))
    [by_mode] = choose_settings([pretrain], val, val_feats, extractor, choice_protocol, [0.0, 0.001], MODES,
                                max_copy_rate=1.0)
    assert set(by_mode) == set(MODES)
    for mode, (chosen, table) in by_mode.items():
        best = min(table, key=lambda c: c["fid"])
        assert (chosen.lr, chosen.temperature) == (best["lr"], best["temperature"]), mode
    assert [c["fid"] for c in by_mode["prior"][1]] != [c["fid"] for c in by_mode["support"][1]]

    def setting(lr: float, t: float) -> dict:
        return {"lr": lr, "temperature": t, "nll_lr": None, "candidates": []}

    selection = {"pretrain": {"prior": setting(0.0, 0.3), "support": setting(0.001, 1.0)},  # two lrs
                 "scratch": {"prior": setting(0.001, 1.0), "support": setting(0.001, 0.3)}}  # one lr, two temperatures
    scratch = FinetuneGenerator("scratch", plain, None, steps=3)
    scores = score_baselines([pretrain, scratch], test, val, extractor, protocol, 1.0, selection=selection)
    for gen in (pretrain, scratch):
        for mode in MODES:
            s = selection[gen.name][mode]
            [row] = [r for r in scores.rows if (r["model"], r["sampling"]) == (gen.name, mode)]
            [alone] = evaluate_generators([gen.with_settings(s["lr"], s["temperature"])], test, feats, extractor,
                                          protocol, modes=(mode,))
            assert (row["adapt_lr"], row["temperature"]) == (s["lr"], s["temperature"])
            assert row["fid_mean"] == pytest.approx(alone.rows[0]["fid_mean"], rel=1e-9)
            assert row["nll_mean"] == pytest.approx(alone.rows[0]["nll_mean"], rel=1e-9)
            assert all(torch.equal(a, b) for a, b in zip(scores.samples[gen.name][mode], alone.samples[mode],
                                                         strict=True))


def test_each_model_s_likelihood_is_measured_at_the_lr_that_gives_it_the_best_one_on_meta_val(
        setup, digits_prepared: Path) -> None:  # noqa: ANN001
    """With ``eval.nll_choice_images`` the choice measures every lr's NLL on meta-val and the
    generator's NLL is then taken at the lowest one's lr: exactly the NLL of the generator set to
    that lr, while its samples stay those of its sampling lr; with 0 the NLL stays at the sampling
    settings (the choice measures none)."""
    from components.evaluation.protocol import choose_settings, run_generators

    params, test, learner, extractor, _, feats = setup
    plain = ConvVAE(replace(learner.model.cfg, context_dim=0))
    pretrain = FinetuneGenerator("pretrain", plain, param_dict(plain), steps=3)
    val = load_split(digits_prepared, "val")
    val_feats = extractor.features(torch.from_numpy(val.images))
    lrs = [0.0, 0.01, 0.1]
    ev = make_params(*TINY, "eval.nll_choice_images=3").eval
    [by_mode] = choose_settings([pretrain], val, val_feats, extractor, Protocol(ev, params.meta.k_shot, "v"),
                                lrs, ("support",), max_copy_rate=1.0)
    chosen, table = by_mode["support"]
    nll = {c["lr"]: c["nll"] for c in table}
    assert set(nll) == set(lrs) and len(set(nll.values())) == len(lrs)  # every lr measured, each its own
    assert chosen.nll_lr == min(nll, key=nll.__getitem__)
    protocol = Protocol(ev, params.meta.k_shot, "t")
    sampling_lr = next(lr for lr in lrs if lr != chosen.nll_lr)
    both = pretrain.with_settings(sampling_lr, 1.0).with_nll_lr(chosen.nll_lr)
    [[mixed], [at_nll], [at_sampling]] = run_generators(
        [both, pretrain.with_settings(chosen.nll_lr, 1.0), pretrain.with_settings(sampling_lr, 1.0)],
        test, feats, extractor, protocol, [ev.seed], ("support",), score_aug=False)
    assert mixed.nll == at_nll.nll != at_sampling.nll
    assert all(torch.equal(a, b) for a, b in zip(mixed.samples[("support", 1.0)],
                                                 at_sampling.samples[("support", 1.0)], strict=True))
    row = evaluate_generators([both], test, feats, extractor, protocol)[0].rows[0]
    assert (row["adapt_lr"], row["nll_lr"]) == (sampling_lr, chosen.nll_lr)
    off = make_params(*TINY, "eval.nll_choice_images=0").eval
    [by_mode] = choose_settings([pretrain], val, val_feats, extractor, Protocol(off, params.meta.k_shot, "v"), lrs,
                                ("support",), 1.0)
    plain_choice, plain_table = by_mode["support"]
    assert plain_choice.nll_lr is None and {c["nll"] for c in plain_table} == {None}


def test_a_temperature_must_be_positive() -> None:
    with pytest.raises(ParamsError, match=r"eval.temperatures: expected sampling temperatures > 0, got \[1.0, 0\]"):
        make_params("eval.temperatures=[1.0, 0]")
    with pytest.raises(ParamsError, match="eval.temperatures"):
        make_params("eval.temperatures=[]")


def test_a_spatial_temperature_needs_the_ladder() -> None:
    with pytest.raises(ParamsError, match=r"eval.spatial_temperature 0 needs spatial latents \(model.arch ladder, not conv\)"):
        make_params("eval.spatial_temperature=0")
    with pytest.raises(ParamsError, match="eval.spatial_temperature"):
        make_params("model.arch=ladder", "eval.spatial_temperature=-0.5")
    assert make_params("model.arch=ladder", "eval.spatial_temperature=0").eval.spatial_temperature == 0.0


def test_the_baselines_settings_choice_is_cached_apart_from_what_it_does_not_read(
        tmp_path: Path, digits_prepared: Path) -> None:
    """The choice (one seed, FID, copy rate and NLL on meta-val) is the references' costly part:
    more importance samples or held-out images for the table's NLL, another number of repeats or a
    subset of the meta-test classes (``eval.max_classes``) rescores them with the choice already
    made; an unreadable choice is made again."""
    from components.evaluation.evaluate import _cached_choice, baseline_scores

    params = make_params(*TINY)
    build_domain_features(params, digits_prepared, tmp_path / "features")
    cache = tmp_path / "cache"
    first = baseline_scores(params, digits_prepared, tmp_path / "features", cache)
    [choice] = list(cache.glob("baselines-choice-*.json"))
    made = json.loads(choice.read_text())
    assert made == json.loads(json.dumps(first.selection))
    other_lr = next(lr for lr in (0.0, 0.001) if lr != made["pretrain"]["support"]["lr"])
    choice.write_text(json.dumps({**made, "pretrain": {mode: {**s, "lr": other_lr}  # as if chosen so
                                                       for mode, s in made["pretrain"].items()}}))
    again = baseline_scores(make_params(*TINY, "eval.nll_samples=6", "eval.nll_max_images=3",
                                        "eval.repeats=1", "eval.max_classes=1"), digits_prepared, tmp_path / "features", cache)
    assert list(cache.glob("baselines-choice-*.json")) == [choice]
    assert {r["adapt_lr"] for r in again.rows if r["model"] == "pretrain"} == {other_lr}
    assert {(r["sampling"], r["adapt_lr"]) for r in first.rows if r["model"] == "pretrain"} == {
        (mode, s["lr"]) for mode, s in made["pretrain"].items()}
    choice.write_text("{not json")
    assert _cached_choice(choice, ["pretrain", "scratch"]) is None
    choice.write_text(json.dumps({"pretrain": made["pretrain"]}))
    assert _cached_choice(choice, ["pretrain", "scratch"]) is None
    choice.write_text(json.dumps({name: made[name]["support"] for name in made}))  # a choice of one mode for all
    assert _cached_choice(choice, ["pretrain", "scratch"]) is None


def test_with_binarize_the_evaluation_scores_binary_images_under_its_own_digest(digits_prepared: Path) -> None:
    from components.evaluation.evaluate import eval_split, nll_meaning

    grey, binary = make_params(*TINY, "model.binarize=false"), make_params(*TINY, "model.binarize=true")
    test = eval_split(digits_prepared, "test", binary)
    assert set(np.unique(test.images)) == {0.0, 1.0}
    assert np.array_equal(test.images, eval_split(digits_prepared, "test", binary).images)  # fixed
    assert len(np.unique(eval_split(digits_prepared, "test", grey).images)) > 2
    sha = read_manifest(digits_prepared)["splits"]["test"]["sha256"]
    assert Protocol(binary.eval, 5, sha, binarized=True).digest != Protocol(grey.eval, 5, sha).digest
    assert "a likelihood" in nll_meaning("bernoulli", True) and "not the likelihood" in nll_meaning("bernoulli", False)
