"""Evaluate a meta-trained checkpoint against both baselines and the support-replay reference."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.atomic import atomic_file, write_text_atomic
from components.data.binarize import binarized_split
from components.data.prepare import Split, load_split, read_manifest
from components.evaluation import extractors as ex
from components.evaluation.inception import InceptionExtractor, load_inception_extractor
from components.evaluation.pictures import fid_bar_chart, loss_curve, sample_grid, save_grid, selection_chart
from components.errors import MetagenError
from components.evaluation.parallel import Mapper
from components.evaluation.protocol import (
    Protocol,
    choose_settings,
    draw_episode,
    evaluate_generators,
    real_units,
    select_classes,
)
from components.evaluation.bootstrap import FidUnits, compare, fid_units, save_units
from components.evaluation.report import markdown_table
from components.meta.generators import (
    MODES,
    FewShotGenerator,
    FinetuneGenerator,
    MetaGenerator,
    SupportReplay,
    pretrain_vae,
)
from components.meta.adaptation import AdaptationRule
from components.meta.learner import MetaLearner
from components.meta.trainer import vae_config
from components.models.vae import ConvVAE, VAEConfig, new_vae, param_dict
from components.params import EvalParams, Params
from components.threads import figure_threads, torch_threads
from components.timing import phase

log = logging.getLogger(__name__)
DOMAIN_FILE = "domain.pt"
DOMAIN_METRICS = "metrics.json"
UNITS_FILE = "fid_units.npz"


def build_domain_features(params: Params, prepared_dir: Path, features_dir: Path) -> dict[str, Any]:
    """The dvc.yaml ``features`` stage: train the domain CNN on meta-train classes, write it + metrics."""
    train = load_split(prepared_dir, "train")
    net, metrics = ex.fit_domain_extractor(train.images, train.labels, params.eval.feature_steps, params.train.seed,
                                           threads=figure_threads(params.train))
    meta = {"channels": int(train.images.shape[1]), "num_classes": len(train.classes), "classes": train.classes}
    ex.save_domain_extractor(features_dir / DOMAIN_FILE, net, meta)
    metrics["digest"] = ex.DomainExtractor(net).digest
    ex.write_metrics(features_dir / DOMAIN_METRICS, metrics)
    log.info("domain extractor: held-out accuracy %.3f on meta-train classes", metrics["heldout_accuracy"])
    return metrics


def eval_split(prepared_dir: Path, name: str, params: Params) -> Split:
    """A split the evaluation scores on: with ``model.binarize``, binarized once (seeded by
    ``eval.seed``), so that every model adapts to and is scored on the same binary images."""
    split = load_split(prepared_dir, name)
    return binarized_split(split, params.eval.seed) if params.model.binarize else split


def nll_meaning(likelihood: str, binarized: bool) -> str:
    """What the table's NLL column is, said with it: only some settings make it a likelihood."""
    if likelihood == "bernoulli":
        return ("-log p(x) of the binarized held-out images, nats per image (a likelihood)" if binarized else
                "Bernoulli cross-entropy of grey-level images, nats per image: not the likelihood of a distribution "
                "over them (set model.binarize for one)")
    return ("-log P(x) of the 8-bit held-out images under the discretized Gaussian decoder, nats per image "
            "(a likelihood), and in bits per dimension")


def bits_per_dim(nats: float | None, dims: int) -> float | None:
    """Nats per image -> bits per dimension (pixel and channel), as the field reports RGB likelihoods."""
    return None if nats is None else nats / (dims * math.log(2))


def load_extractor(params: Params, features_dir: Path) -> tuple[ex.FeatureExtractor, float | None]:
    """The configured extractor and (domain) its held-out accuracy; refuses one too weak to trust.

    The domain extractor is the output of the dvc.yaml ``features`` stage: it is never trained here.
    """
    if params.extractor_kind() == "inception":
        return load_inception_extractor(params.eval.inception_weights), None
    return ex.load_domain_extractor(features_dir / DOMAIN_FILE), domain_accuracy(params.eval, features_dir)


def check_extractor(params: Params, features_dir: Path) -> None:
    """What :func:`load_extractor` refuses, as soon as the extractor is ready (before a training
    ends): missing or wrong Inception weights, a domain extractor below its accuracy floor."""
    load_extractor(params, features_dir)


def domain_accuracy(evaluation: EvalParams, features_dir: Path) -> float:
    """The domain extractor's held-out accuracy on meta-train classes, if at least its floor."""
    metrics_path = features_dir / DOMAIN_METRICS
    try:
        acc = float(json.loads(metrics_path.read_text())["heldout_accuracy"])
    except (OSError, ValueError, KeyError) as err:
        raise MetagenError(f"{metrics_path}: no held-out accuracy of the domain extractor ({err}); "
                           "run `dvc repro features`") from None
    floor = evaluation.min_extractor_accuracy
    if acc < floor:
        raise MetagenError(
            f"{metrics_path}: the domain extractor's held-out accuracy {acc:.3f} is below "
            f"eval.min_extractor_accuracy {floor:g}; its FID/PRDC would say little. Raise eval.feature_steps "
            "and run `dvc repro features`, or use eval.extractor: inception")
    return acc


def pretrained_baseline(params: Params, cfg: VAEConfig, train: Split, cache_dir: Path, data_key: str) -> ConvVAE:
    """The ``pretrain`` baseline's joint VAE, cached on (data, model, pretrain params). Its gradient's
    norm is clipped to ``meta.grad_clip`` as the meta-model's outer step is: the same recipe (on faces
    the unclipped baseline's gradient spikes cost it 0.37 bits/dim on meta-val, docs/results/faces.md)."""
    key = hashlib.sha256(json.dumps({
        "data": data_key, "vae": cfg.cache_key(), "steps": params.train.pretrain_steps, "grad_clip": params.meta.grad_clip,
        "batch": params.train.pretrain_batch_size, "lr": params.eval.pretrain_lr, "seed": params.train.seed,
        **({"binarize": True} if params.model.binarize else {}),  # (absent when off: the caches made before it hold)
        **({"lr_schedule": params.train.lr_schedule} if params.train.lr_schedule != "constant" else {}),
    }, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"pretrain-{key}.pt"
    model = new_vae(cfg)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model
    log.info("training the pretrain baseline (%d Adam steps on all meta-train images)", params.train.pretrain_steps)
    with torch_threads(figure_threads(params.train)):
        model, _ = pretrain_vae(cfg, train.images, params.train.pretrain_steps, params.train.pretrain_batch_size,
                                params.eval.pretrain_lr, params.train.seed, params.model.binarize,
                                params.train.lr_schedule, params.meta.grad_clip)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return model


def baseline_vae_config(params: Params, train: Split) -> VAEConfig:
    """The baselines' VAE: the meta-model's architecture without the class context, trained on the ELBO."""
    return replace(vae_config(params.model, train), context_dim=0, kl_weight=1.0, support_attention=False)


def reference_pretrain(params: Params, prepared_dir: Path, cache_dir: Path) -> ConvVAE:
    """The ``pretrain`` baseline the references start from, trained once and cached (it needs
    neither the extractor nor the meta-model: `metagen run` trains it beside both)."""
    train = load_split(prepared_dir, "train")
    return pretrained_baseline(params, baseline_vae_config(params, train), train, cache_dir,
                               read_manifest(prepared_dir)["splits"]["train"]["sha256"])


def choice_classes(val: Split, ev: EvalParams) -> Split:
    """The seeded meta-val classes on which every model's settings (lr, temperature) are chosen."""
    return select_classes(val, ev.lr_choice_classes, ev.seed + 1)


@dataclass(frozen=True)
class EvalContext:
    """What the meta-model's and the references' scoring share, built once (:func:`eval_context`):
    the test classes (a seeded subset), the meta-val classes settings are chosen on, the data
    manifest, the protocol and the extractor with its held-out accuracy (domain)."""

    test: Split
    choice: Split
    manifest: dict[str, Any]
    protocol: Protocol
    extractor: ex.FeatureExtractor
    extractor_accuracy: float | None


def eval_context(params: Params, prepared_dir: Path, features_dir: Path) -> EvalContext:
    ev = params.eval
    manifest = read_manifest(prepared_dir)
    extractor, accuracy = load_extractor(params, features_dir)
    return EvalContext(
        test=select_classes(eval_split(prepared_dir, "test", params), ev.max_classes, ev.seed),
        choice=choice_classes(eval_split(prepared_dir, "val", params), ev),
        manifest=manifest,
        protocol=Protocol(ev, params.meta.k_shot, manifest["splits"]["test"]["sha256"], params.model.binarize),
        extractor=extractor,
        extractor_accuracy=accuracy,
    )


@dataclass
class Scores:
    """What scoring gives: the table's rows, the first repeat's samples, each model's settings
    chosen on meta-val (lr, temperature) with every candidate's FID and copy rate, and each
    model's features per sampling mode [repeat][class] (the units of the FID's bootstrap)."""

    rows: list[dict[str, Any]]
    samples: dict[str, dict[str, list[torch.Tensor]]]
    selection: dict[str, Any]
    features: dict[str, dict[str, list[list[np.ndarray]]]]


def score_baselines(
    baselines: list[FinetuneGenerator],
    test: Split,
    val: Split,
    extractor: ex.FeatureExtractor,
    protocol: Protocol,
    max_copy_rate: float,
    stats_cache: Path | None = None,
    mapper: Mapper | None = None,
    selection: dict[str, Any] | None = None,
) -> Scores:
    """The references the meta-model is compared with; they do not depend on it (so they can run
    while it trains, and be cached): each baseline with its adaptation lr and sampling temperature
    chosen on the meta-val classes ``val`` in each sampling mode on its own first (``selection``:
    a choice already made, as this function returns it: name -> mode -> settings), then the
    support-replay reference. The modes that chose the same lr share one adaptation."""
    test_feats = extractor.features(torch.from_numpy(test.images))
    if selection is None:
        selection = {}
        if baselines:
            val_feats = extractor.features(torch.from_numpy(val.images))
            with phase("baseline settings choice"):  # lr x temperature, per mode
                picked = choose_settings(baselines, val, val_feats, extractor, protocol, protocol.eval.finetune_lrs,
                                         MODES, max_copy_rate, mapper)
            selection = {gen.name: {mode: {"lr": g.lr, "temperature": g.temperature, "nll_lr": g.nll_lr,
                                           "candidates": table} for mode, (g, table) in by_mode.items()}
                         for gen, by_mode in zip(baselines, picked, strict=True)}
    chosen: list[FewShotGenerator] = []
    for gen in baselines:
        by_lr: dict[float | None, dict[str, float]] = {}
        for mode, setting in selection[gen.name].items():
            by_lr.setdefault(setting["lr"], {})[mode] = setting["temperature"]
        nll_lr = next(iter(selection[gen.name].values()))["nll_lr"]
        chosen += [gen.with_settings(lr, gen.temperature).with_nll_lr(nll_lr).with_modes(temps)
                   for lr, temps in by_lr.items()]
    gens = [*chosen, SupportReplay()]
    with phase("baselines and replay"):
        results = evaluate_generators(gens, test, test_feats, extractor, protocol, stats_cache=stats_cache,
                                      mapper=mapper)
    rows = [row for res in results for row in res.rows]
    samples: dict[str, dict[str, list[torch.Tensor]]] = {}
    features: dict[str, dict[str, list[list[np.ndarray]]]] = {}
    for gen, res in zip(gens, results, strict=True):
        features.setdefault(gen.name, {}).update(res.features)
        if not isinstance(gen, SupportReplay):
            samples.setdefault(gen.name, {}).update(res.samples)
    return Scores(rows, samples, selection, features)


def choose_meta_settings(meta: MetaGenerator, val: Split, extractor: ex.FeatureExtractor, protocol: Protocol,
                         max_copy_rate: float, mapper: Mapper | None = None) -> tuple[MetaGenerator, dict[str, Any]]:
    """The meta-model's fine-tuning lr after its context steps (``eval.finetune_lrs``, 0 = none)
    and its sampling temperature, chosen on the baselines' meta-val classes, in its served mode, by
    the rule the baselines' are chosen by (the lowest FID that does not copy; its NLL's lr too, as theirs)."""
    ev = protocol.eval
    val_feats = extractor.features(torch.from_numpy(val.images))
    with phase("settings choice"):
        [by_mode] = choose_settings([meta], val, val_feats, extractor, protocol, ev.finetune_lrs,
                                    (meta.rule.sampling,), max_copy_rate, mapper)
    chosen, table = by_mode[meta.rule.sampling]
    return chosen, {"lr": chosen.lr, "temperature": chosen.temperature, "nll_lr": chosen.nll_lr,
                    "candidates": table}


def score(
    meta: FewShotGenerator,
    references: Scores,
    test: Split,
    extractor: ex.FeatureExtractor,
    protocol: Protocol,
    stats_cache: Path | None = None,
    mapper: Mapper | None = None,
) -> Scores:
    """Scoring, no files: the meta-model through the protocol, next to the references' scores."""
    test_feats = extractor.features(torch.from_numpy(test.images))
    with phase(meta.name):
        [res] = evaluate_generators([meta], test, test_feats, extractor, protocol, stats_cache=stats_cache,
                                    mapper=mapper)
    return Scores(res.rows + references.rows, {meta.name: res.samples, **references.samples}, references.selection,
                  {meta.name: res.features, **references.features})


def fid_comparisons(scores: Scores, real: list[list[np.ndarray]], ev: EvalParams) -> list[dict[str, Any]]:
    """The meta-model's FID (in ``eval.sampling``) minus every other row's, each with its paired
    bootstrap interval (:mod:`components.evaluation.bootstrap`)."""
    others = {(name, mode): fid_units(units, f"{name} ({mode})")
              for name, by_mode in scores.features.items() if name != "meta" for mode, units in by_mode.items()}
    with phase("FID bootstrap"):
        intervals = compare(fid_units(scores.features["meta"][ev.sampling], "meta"), others,
                            fid_units(real, "held-out images"), ev.bootstrap_samples, ev.seed, ev.confidence)
    return [{"model": name, "sampling": mode, **iv.to_dict()} for (name, mode), iv in intervals.items()]


BASELINES_CACHE_VERSION = 8  # bump when what score_baselines computes changes (8: each mode at its own settings)
CHOICE_CACHE_VERSION = 7  # ... and this when their settings choice changes (7: chosen per sampling mode)


def baselines_key(params: Params, manifest: dict[str, Any], protocol: Protocol, extractor_digest: str,
                  cfg: VAEConfig, choice: bool = False) -> str:
    """The baselines' scores depend on the data, the protocol, the extractor, the baselines' own
    settings and their VAE, never on the meta-model: a digest of exactly those (``choice``: of what
    their settings choice depends on, so that more importance samples for the table's NLL or
    another number of repeats rescores them without choosing again)."""
    ev, splits = params.eval, manifest["splits"]
    blob = {
        "version": CHOICE_CACHE_VERSION if choice else BASELINES_CACHE_VERSION, "data": {k: splits[k]["sha256"] for k in ("train", "val", "test")},
        "protocol": protocol.choice_digest if choice else protocol.digest, "choice": choice,
        "extractor": extractor_digest, "vae": cfg.cache_key(),
        "baselines": {k: getattr(ev, k) for k in ("finetune_lrs", "lr_choice_classes", "finetune_steps",
                                                   "scratch_steps", "pretrain_lr")},
        "pretrain": {"steps": params.train.pretrain_steps, "batch": params.train.pretrain_batch_size,
                     "seed": params.train.seed},
        "max_copy_rate": params.registry.max_copy_rate, "modes": MODES,
        "copy_bound": {"confidence": ev.confidence, "samples": ev.bootstrap_samples},  # the choice's rule
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def baseline_scores(params: Params, prepared_dir: Path, features_dir: Path, cache_dir: Path,
                    mapper: Mapper | None = None, context: EvalContext | None = None) -> Scores:
    """The references' scores, computed once per :func:`baselines_key` and cached in ``cache_dir``
    (what `metagen run` starts while the meta-model trains); ``context``: the evaluation's, if built."""
    ev = params.eval
    ctx = context or eval_context(params, prepared_dir, features_dir)
    manifest, protocol, extractor = ctx.manifest, ctx.protocol, ctx.extractor
    plain = baseline_vae_config(params, load_split(prepared_dir, "train"))
    path = cache_dir / f"baselines-{baselines_key(params, manifest, protocol, extractor.digest, plain)}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        features = {name: {mode: [[u.numpy() for u in r] for r in units] for mode, units in by_mode.items()}
                    for name, by_mode in cached["features"].items()}
        return Scores(cached["rows"], cached["samples"], cached["selection"], features)
    with phase("pretrain baseline"):
        pre_model = reference_pretrain(params, prepared_dir, cache_dir)
    gens = [FinetuneGenerator("pretrain", pre_model, param_dict(pre_model), ev.finetune_steps,
                              spatial_temperature=ev.spatial_temperature),
            FinetuneGenerator("scratch", new_vae(plain), None, ev.scratch_steps,
                              spatial_temperature=ev.spatial_temperature)]
    choice_path = cache_dir / f"baselines-choice-{baselines_key(params, manifest, protocol, extractor.digest, plain, choice=True)}.json"
    selection = _cached_choice(choice_path, [gen.name for gen in gens])
    scores = score_baselines(gens, ctx.test, ctx.choice, extractor, protocol,
                             params.registry.max_copy_rate, cache_dir / "fid-stats", mapper, selection)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if selection is None:
        write_text_atomic(choice_path, json.dumps(scores.selection, indent=1))
    with atomic_file(path) as tmp:
        torch.save({"rows": scores.rows, "samples": scores.samples, "selection": scores.selection,
                    "features": {name: {mode: [[torch.from_numpy(np.array(u)) for u in r] for r in units]
                                        for mode, units in by_mode.items()}
                                 for name, by_mode in scores.features.items()}}, tmp)
    return scores


def _cached_choice(path: Path, names: list[str]) -> dict[str, Any] | None:
    """A baselines' settings choice made before (None: none, or one unreadable, made again)."""
    if not path.is_file():
        return None
    try:
        selection = json.loads(path.read_text())
        if all(set(selection[n]) == set(MODES) and all(
                isinstance(s["lr"], (int, float)) and s["temperature"] > 0
                and isinstance(s["nll_lr"], (int, float, type(None))) for s in selection[n].values())
               for n in names):
            return selection
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("%s: not a settings choice of %s; choosing again", path, ", ".join(names))
    return None


@dataclass
class EvalOutputs:
    report: dict[str, Any]
    report_path: Path
    markdown_path: Path
    pictures: list[Path]
    units_path: Path  # the meta-model's FID units: the champion comparison of a later version reads them


def evaluate(
    learner: MetaLearner,
    rule: AdaptationRule,
    params: Params,
    prepared_dir: Path,
    out_dir: Path,
    features_dir: Path,
    cache_dir: Path,
    history: list[dict[str, float]] | None = None,
    baselines: bool = True,
    mapper: Mapper | None = None,
    choose: bool = True,
) -> EvalOutputs:
    """The meta-model vs ``pretrain`` vs ``scratch`` vs support replay, each sampling mode: the
    data, extractor and references loaded (or computed and cached), the meta-model's fine-tuning lr
    and temperature chosen on meta-val (``choose=False``: the rule's own, as registered), :func:`score`, then the
    report, table and pictures; the report's ``adaptation`` is the rule that was scored.
    ``baselines=False``: the meta-model alone."""
    ev = params.eval
    with phase("load data and extractor"):
        ctx = eval_context(params, prepared_dir, features_dir)
        test, protocol, extractor = ctx.test, ctx.protocol, ctx.extractor
    references = Scores([], {}, {}, {})
    if baselines:
        with phase("references (baselines, replay)"):
            references = baseline_scores(params, prepared_dir, features_dir, cache_dir, mapper, ctx)
    meta = MetaGenerator(learner, rule)
    meta_choice = {"lr": rule.finetune_lr, "temperature": rule.temperature, "nll_lr": None, "candidates": []}
    if choose:
        meta, meta_choice = choose_meta_settings(meta, ctx.choice, extractor, protocol, params.registry.max_copy_rate,
                                                 mapper)
    rule = meta.rule
    scores = score(meta, references, test, extractor, protocol, cache_dir / "fid-stats", mapper)
    rows = scores.rows
    if params.model.likelihood == "gaussian":
        dims = int(np.prod(test.images.shape[1:]))
        rows = [{**r, "nll_bpd_mean": bits_per_dim(r["nll_mean"], dims), "nll_bpd_std": bits_per_dim(r["nll_std"], dims)}
                for r in rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    real = real_units(test, extractor.features(torch.from_numpy(test.images)), protocol)
    units_path = out_dir / UNITS_FILE
    save_units(units_path, FidUnits(extractor.digest, protocol.digest, scores.features["meta"][ev.sampling], real))
    selection = {meta.name: {rule.sampling: meta_choice}, **scores.selection}  # name -> mode -> settings
    with phase("pictures"):
        pictures = _pictures(out_dir, test, protocol, scores.samples, rows, history)
        chart = selection_chart(out_dir / "selection.png", selection, params.registry.max_copy_rate)
        pictures += [chart] if chart is not None else []
    report = {
        "nll": nll_meaning(params.model.likelihood, params.model.binarize)
        + (", each model at its likelihood-best fine-tuning lr chosen on meta-val (its lr beside it where it differs from the sampling one)"
           if ev.nll_choice_images > 0 and choose else ", each model at its sampling settings"),
        "protocol": {"digest": protocol.digest, **ev.model_dump(mode="json"), "k_shot": params.meta.k_shot,
                     "test_classes": test.classes},
        "extractor": {"name": extractor.name, "digest": extractor.digest, "heldout_accuracy": ctx.extractor_accuracy},
        "adaptation": rule.to_dict(),
        "rows": rows,
        "selection": selection,
        "comparisons": fid_comparisons(scores, real, ev) if len(scores.features) > 1 else [],
        "best": {mode: min((r for r in rows if r["sampling"] == mode), key=lambda r: r["fid_mean"])["model"]
                 for mode in MODES},
    }
    if isinstance(extractor, InceptionExtractor):
        report["inception_score"] = inception_scores(extractor, scores.samples)
    report_path = out_dir / "eval.json"
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
    md_path = out_dir / "eval.md"
    write_text_atomic(md_path, markdown_table(report))
    return EvalOutputs(report, report_path, md_path, pictures, units_path)


def inception_scores(extractor: InceptionExtractor, samples: dict[str, dict[str, list[torch.Tensor]]]) -> dict[str, Any]:
    """Each model's Inception Score (10 splits) per sampling mode over all its samples of the first
    repeat; a note instead when the weights have no classifier head."""
    if not extractor.has_head:
        return {"unavailable": "the packaged Inception weights stop at the pool features: set eval.inception_weights "
                               "to pytorch-fid's pt_inception-2015-12-05-6726825d.pth for the Inception Score"}
    scores: dict[str, Any] = {}
    for name, by_mode in samples.items():
        for mode, per_class in by_mode.items():
            score = extractor.inception_score(torch.cat(per_class))
            if score is not None:
                scores.setdefault(name, {})[mode] = dict(zip(("mean", "std"), score))
    return scores


def _pictures(out_dir: Path, test: Split, protocol: Protocol, samples: dict, rows: list, history: list | None) -> list[Path]:
    episode = draw_episode(test, protocol.k_shot, protocol.eval.seed)  # the first repeat's supports
    shown = list(range(min(4, len(test.classes))))
    supports = [torch.from_numpy(test.images[episode.supports[c]]) for c in shown]
    paths = []
    for name, by_mode in samples.items():
        for mode, per_class in by_mode.items():
            grid = sample_grid(supports, [per_class[c] for c in shown], per_row=10)
            title = f"{name}, {mode} sampling: each row a test class, its K={protocol.k_shot} supports | samples"
            paths.append(save_grid(out_dir / f"grid_{name}_{mode}.png", grid, title))
    paths.append(fid_bar_chart(out_dir / "fid.png", rows))
    if history:
        curve = loss_curve(out_dir / "loss.png", history)
        if curve is not None:
            paths.append(curve)
    return paths
