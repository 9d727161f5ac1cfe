"""The few-shot evaluation protocol: adapt on K images of each meta-test class, then score.

Per model and repeat (a seeded draw of the K supports of every class):
* ``nll``: an importance-weighted estimate (IWAE, ``eval.nll_samples`` from the posterior widened by
  each of ``eval.nll_proposal_scales``: a stratified mixture proposal) of -log p(x) of the class's
  held-out images given the adapted model, nats per image: the headline, which copying cannot win;
* per sampling mode, ``eval.samples_per_class`` images per class scored against the held-out real
  images in the extractor's space: pooled FID and KID, precision / recall / density / coverage,
  the copy rate (:mod:`components.evaluation.memorisation`), and the accuracy of a classifier
  trained on the generated images and tested on the real ones (F2GAN's augmentation measure).
Means and standard deviations over ``eval.repeats``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from components.data.binarize import binarize
from components.data.prepare import Split
from components.errors import MetagenError
from components.evaluation.extractors import FeatureExtractor, accuracy, train_classifier
from components.evaluation.frechet import Statistics, cached_statistics, frechet_distance, kid, statistics
from components.evaluation.memorisation import balanced_prdc, copy_counts, copy_rate_bound
from components.evaluation.parallel import LocalMapper, Mapper
from components.meta.generators import MODES, FewShotGenerator
from components.params import EvalParams
from components.timing import phase

log = logging.getLogger(__name__)
SAMPLE_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage", "copy_rate", "aug_acc")


@dataclass(frozen=True)
class Protocol:
    eval: EvalParams
    k_shot: int
    test_sha256: str
    binarized: bool = False  # the evaluation's images binarized once (model.binarize)

    @property
    def digest(self) -> str:
        return self._digest(SCORING_FIELDS)

    @property
    def choice_digest(self) -> str:
        """What a settings choice (:func:`choose_settings`: one seed, its own NLL budget, no
        augmentation classifier) depends on: the digest without the fields it does not read."""
        unread = set() if self.eval.nll_choice_images > 0 else {"nll_proposal_scales", "nll_choice_samples"}
        return self._digest(SCORING_FIELDS - NOT_IN_CHOICE - unread)

    def _digest(self, include: set[str]) -> str:
        fields = self.eval.model_dump(mode="json", include=include)
        if fields.get("spatial_temperature", 0) is None:  # absent when unset: the digests made before it hold
            del fields["spatial_temperature"]
        blob = json.dumps({"eval": fields, "k_shot": self.k_shot, "test": self.test_sha256,
                           **({"binarized": True} if self.binarized else {})}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


SCORING_FIELDS = {"seed", "repeats", "samples_per_class", "temperatures", "spatial_temperature", "kid_subsets", "kid_subset_size",
                  "augment_steps", "max_classes", "nll_samples", "nll_proposal_scales", "nll_max_images", "prdc_k",
                  "copy_percentile", "copy_max_shift", "nll_choice_images", "nll_choice_samples"}
# the choice reads meta-val classes only: the meta-test subset (max_classes) is not among its inputs
NOT_IN_CHOICE = {"repeats", "augment_steps", "nll_samples", "nll_max_images", "max_classes"}


def select_classes(split: Split, max_classes: int | None, seed: int) -> Split:
    """A seeded subset of ``max_classes`` classes (all when ``None`` or fewer exist), relabelled."""
    n = len(split.classes)
    if max_classes is None or max_classes >= n:
        return split
    keep = np.sort(np.random.default_rng([seed, n]).choice(n, size=max_classes, replace=False))
    mask = np.isin(split.labels, keep)
    relabel = {int(c): i for i, c in enumerate(keep)}
    labels = np.array([relabel[int(c)] for c in split.labels[mask]], dtype=split.labels.dtype)
    return Split(split.images[mask], labels, [split.classes[int(c)] for c in keep])


@dataclass
class Episode:
    """One repeat: the K support indices of every class and the real images outside them."""

    supports: list[np.ndarray]
    heldout: list[np.ndarray]


def draw_episode(split: Split, k_shot: int, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    supports, heldout = [], []
    for c in range(len(split.classes)):
        idx = np.flatnonzero(split.labels == c)
        perm = rng.permutation(idx)
        supports.append(np.sort(perm[:k_shot]))
        heldout.append(np.sort(perm[k_shot:]))
    return Episode(supports, heldout)


@dataclass
class Scored:
    """One mode's metrics, and its samples' features class by class (the FID's bootstrap units)."""

    metrics: dict[str, float]
    features: list[np.ndarray]
    copies: np.ndarray  # [class, (copies, images)]


def score_samples(
    generated: list[Tensor], split: Split, episode: Episode, real_feats: np.ndarray, extractor: FeatureExtractor,
    protocol: Protocol, seed: int, name: str, score_aug: bool = True, real_stats: Statistics | None = None,
) -> Scored:
    """Every sample metric of one mode (``generated[c]``: class c's images) against held-out reals."""
    fake = torch.cat(generated)
    if not torch.isfinite(fake).all():
        raise MetagenError(f"model {name!r} generated images with NaN or inf; refusing to compute FID")
    with phase("features"):
        fake_feats = extractor.features(fake)
    held = np.concatenate(episode.heldout)
    real = real_feats[held]
    s_fake = statistics(fake_feats, f"{name} generated features")
    s_real = real_stats if real_stats is not None else statistics(real, "real features")
    out = {"fid": frechet_distance(s_fake.mu, s_fake.sigma, s_real.mu, s_real.sigma)}
    out["kid"], _ = kid(fake_feats, real, protocol.eval.kid_subsets, protocol.eval.kid_subset_size, seed)
    bounds = np.cumsum([0] + [len(g) for g in generated])
    out.update(balanced_prdc([real_feats[h] for h in episode.heldout],
                             [fake_feats[bounds[c] : bounds[c + 1]] for c in range(len(generated))],
                             protocol.eval.prdc_k))
    copies = copy_counts([g.float() for g in generated], [torch.from_numpy(split.images[s]) for s in episode.supports],
                         [torch.from_numpy(split.images[h]) for h in episode.heldout], protocol.eval.copy_percentile,
                         protocol.eval.copy_max_shift)
    out["copy_rate"] = float(copies[:, 0].sum() / max(int(copies[:, 1].sum()), 1))
    out["aug_acc"] = float("nan")
    if score_aug:
        with phase("augmentation classifier"):
            labels = torch.cat([torch.full((len(g),), c, dtype=torch.long) for c, g in enumerate(generated)])
            clf = train_classifier(fake, labels, len(generated), protocol.eval.augment_steps, seed, width=32)
            out["aug_acc"] = accuracy(clf, torch.from_numpy(split.images[held]),
                                      torch.from_numpy(split.labels[held]))
    return Scored(out, [fake_feats[bounds[c] : bounds[c + 1]].astype(np.float32) for c in range(len(generated))],
                  copies)


def _modes(gen: FewShotGenerator, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The wanted sampling modes the generator has (the replay reference has its own one)."""
    return tuple(m for m in wanted if m in gen.modes) or gen.modes


def class_seed(seed: int, c: int) -> int:
    """The seed of class ``c``'s adaptation and sampling in the repeat seeded ``seed``: what a class
    draws depends on the class and the repeat only, not on which classes ran before it, or where."""
    return seed + 104729 * (c + 1)


def nll_seed(seed: int, c: int) -> int:
    """The seed of class ``c``'s importance samples (IWAE) in the repeat seeded ``seed``."""
    return seed + 7919 * (c + 1)


Variant = tuple[str, float]  # how a generator samples: (mode, temperature)


@dataclass(frozen=True)
class ClassJob:
    """One class of one repeat of one generator: adapt on the supports, score NLL, sample."""

    gen: int                     # index into the mapped list of generators
    support: Tensor
    nll_images: Tensor | None    # None: no NLL
    samples: int
    variants: tuple[Variant, ...]
    nll_samples: int
    nll_proposal_scales: tuple[float, ...]
    seed: int
    nll_seed: int
    binary: bool = False         # the scored images are binary: samples are Bernoulli draws of the decoder's means


@dataclass
class ClassResult:
    nll: float | None
    samples: dict[Variant, Tensor]


def adapt_class(gens: Sequence[FewShotGenerator], job: ClassJob) -> ClassResult:
    """Adapt, then each variant samples from the generator's state right after adaptation: what
    ``adapt(support, gen)`` then ``sample(...)`` serves for that seed, whatever else is sampled."""
    gen = gens[job.gen]
    torch_gen = torch.Generator().manual_seed(job.seed)
    with phase("adapt"):
        adapted = gen.adapt(job.support, torch_gen)
    after = torch_gen.get_state()
    nll = None
    if job.nll_images is not None:
        judged = adapted
        if gen.nll_lr is not None and gen.nll_lr != gen.lr:  # its likelihood at its own lr, the same seed
            with phase("adapt"):
                judged = gen.with_settings(gen.nll_lr, gen.temperature).adapt(
                    job.support, torch.Generator().manual_seed(job.seed))
        with phase("nll"):
            nll = judged.nll(job.nll_images, job.nll_samples, torch.Generator().manual_seed(job.nll_seed),
                             job.nll_proposal_scales)
    with phase("sample"):
        samples = {}
        for mode, t in job.variants:
            gen_t = torch.Generator().set_state(after)
            samples[(mode, t)] = adapted.sample(job.samples, mode, gen_t, t)
            if job.binary:  # compared with binary images, as binary images (the model's distribution)
                samples[(mode, t)] = binarize(samples[(mode, t)], gen_t)
    return ClassResult(nll, samples)


@dataclass(frozen=True)
class ScoringData:
    """What every scoring job shares (sent once to a Ray cluster)."""

    split: Split
    real_feats: np.ndarray
    extractor: FeatureExtractor
    protocol: Protocol


@dataclass(frozen=True)
class ScoreJob:
    """One sampling mode of one repeat of one generator: its samples, class by class."""

    name: str
    generated: list[Tensor]
    episode: Episode
    seed: int
    real_stats: Statistics
    score_aug: bool


def score_job(data: ScoringData, job: ScoreJob) -> Scored:
    return score_samples(job.generated, data.split, job.episode, data.real_feats, data.extractor, data.protocol,
                         job.seed, job.name, job.score_aug, job.real_stats)


@dataclass
class RepeatResult:
    metrics: dict[Variant, dict[str, float]] = field(default_factory=dict)  # variant -> metric -> value
    nll: float | None = None
    samples: dict[Variant, list[Tensor]] = field(default_factory=dict)
    features: dict[Variant, list[np.ndarray]] = field(default_factory=dict)  # variant -> class -> (n, d)
    copies: dict[Variant, np.ndarray] = field(default_factory=dict)  # variant -> [class, (copies, images)]


def _real_stats(split: Split, episode: Episode, real_feats: np.ndarray, extractor: FeatureExtractor,
                protocol: Protocol, seed: int, stats_cache: Path | None) -> Statistics:
    real = real_feats[np.concatenate(episode.heldout)]
    if stats_cache is None:
        return statistics(real, "real features")
    key = f"{protocol.test_sha256[:16]}-test-{extractor.digest}-{protocol.digest}-seed{seed}"
    return cached_statistics(stats_cache, key, lambda: real)


def run_generators(
    gens: Sequence[FewShotGenerator], split: Split, real_feats: np.ndarray, extractor: FeatureExtractor,
    protocol: Protocol, seeds: Sequence[int], modes: tuple[str, ...] = MODES, score_aug: bool = True,
    score_nll: bool = True, stats_cache: Path | None = None, mapper: Mapper | None = None,
    temperatures: Sequence[float] | None = None, nll_budget: tuple[int, int] | None = None,
) -> list[list[RepeatResult]]:
    """Every generator x repeat (one per seed) x class: adapt, NLL, samples (``mapper`` spreads the
    classes), then every generator x repeat x variant scored (spread too). ``[generator][repeat]``.
    A generator samples each mode at its own temperature, or at each of ``temperatures`` (a choice).
    ``nll_budget``: (held-out images a class, importance samples) of the NLL; None: the table's."""
    mapper = mapper or LocalMapper()
    ev = protocol.eval
    nll_images, nll_samples = nll_budget or (ev.nll_max_images, ev.nll_samples)
    episodes = [draw_episode(split, protocol.k_shot, seed) for seed in seeds]
    n_classes = len(split.classes)
    variants = [tuple((mode, t) for mode in _modes(gen, modes) for t in (temperatures or [gen.sampling_temperature(mode)]))
                for gen in gens]
    jobs = [
        ClassJob(g, torch.from_numpy(split.images[ep.supports[c]]),
                 torch.from_numpy(split.images[ep.heldout[c][:nll_images]]) if score_nll else None,
                 ev.samples_per_class, variants[g], nll_samples, tuple(ev.nll_proposal_scales),
                 class_seed(seed, c), nll_seed(seed, c), protocol.binarized)
        for g in range(len(gens)) for seed, ep in zip(seeds, episodes, strict=True) for c in range(n_classes)
    ]
    with phase("adapt and sample"):
        per_class = iter(mapper.map(adapt_class, list(gens), jobs))
    out = [[RepeatResult() for _ in seeds] for _ in gens]
    score_jobs, where = [], []
    stats = [_real_stats(split, ep, real_feats, extractor, protocol, seed, stats_cache)
             for seed, ep in zip(seeds, episodes, strict=True)]
    for g, gen in enumerate(gens):
        for r, seed in enumerate(seeds):
            results = [next(per_class) for _ in range(n_classes)]
            nlls = [x.nll for x in results if x.nll is not None]
            out[g][r].nll = float(np.mean(nlls)) if nlls else None
            for variant in variants[g]:
                out[g][r].samples[variant] = [x.samples[variant] for x in results]
                score_jobs.append(ScoreJob(gen.name, out[g][r].samples[variant], episodes[r], seed, stats[r],
                                           score_aug))
                where.append((g, r, variant))
    with phase("score"):
        scores = mapper.map(score_job, ScoringData(split, real_feats, extractor, protocol), score_jobs)
    for (g, r, variant), scored in zip(where, scores, strict=True):
        out[g][r].metrics[variant] = scored.metrics
        out[g][r].features[variant] = scored.features
        out[g][r].copies[variant] = scored.copies
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def repeat_seeds(protocol: Protocol) -> list[int]:
    return [protocol.eval.seed + 1000 * r for r in range(protocol.eval.repeats)]


def rows_of(gen: FewShotGenerator, repeats: list[RepeatResult], modes: tuple[str, ...] = MODES) -> list[dict[str, Any]]:
    """The table's rows of one generator (one per sampling mode): mean/std over the repeats."""
    rows = []
    nll = [r.nll for r in repeats if r.nll is not None]
    nll_m, nll_s = _mean_std(nll) if nll else (None, None)
    for mode in _modes(gen, modes):
        row: dict[str, Any] = {
            "model": gen.name, "sampling": mode, "adapt_steps": gen.steps, "adapt_lr": gen.lr,
            "temperature": gen.sampling_temperature(mode), "nll_lr": gen.lr if gen.nll_lr is None else gen.nll_lr,
            "nll_mean": nll_m, "nll_std": nll_s,
        }
        for metric in SAMPLE_METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(
                [r.metrics[(mode, gen.sampling_temperature(mode))][metric] for r in repeats])
        for metric in ("precision", "recall", "density", "coverage", "copy_rate"):
            row[metric] = row[f"{metric}_mean"]
        rows.append(row)
    return rows


@dataclass
class Evaluated:
    """One generator through the protocol: its rows (one per sampling mode, mean/std over
    ``eval.repeats``), the first repeat's samples, and per mode its features [repeat][class]."""

    rows: list[dict[str, Any]]
    samples: dict[str, list[Tensor]]
    features: dict[str, list[list[np.ndarray]]]


def evaluate_generators(
    gens: Sequence[FewShotGenerator], split: Split, real_feats: np.ndarray, extractor: FeatureExtractor,
    protocol: Protocol, modes: tuple[str, ...] = MODES, stats_cache: Path | None = None,
    mapper: Mapper | None = None,
) -> list[Evaluated]:
    results = run_generators(gens, split, real_feats, extractor, protocol, repeat_seeds(protocol), modes,
                             stats_cache=stats_cache, mapper=mapper)
    return [Evaluated(rows_of(gen, repeats, modes),
                      {mode: per_class for (mode, _), per_class in repeats[0].samples.items()},
                      {mode: [r.features[(mode, t)] for r in repeats] for (mode, t) in repeats[0].features})
            for gen, repeats in zip(gens, results, strict=True)]


def real_units(split: Split, real_feats: np.ndarray, protocol: Protocol) -> list[list[np.ndarray]]:
    """The held-out real images' features [repeat][class]: what every model's samples are scored against."""
    return [[real_feats[h].astype(np.float32) for h in draw_episode(split, protocol.k_shot, seed).heldout]
            for seed in repeat_seeds(protocol)]


def choose_settings(
    gens: Sequence[FewShotGenerator], val: Split, val_feats: np.ndarray, extractor: FeatureExtractor,
    protocol: Protocol, lrs: Sequence[float] | None, modes: tuple[str, ...], max_copy_rate: float,
    mapper: Mapper | None = None,
) -> list[dict[str, tuple[FewShotGenerator, list[dict[str, float | None]]]]]:
    """Each generator's sampling temperature (``eval.temperatures``) and its fine-tuning lr
    (``lrs``; None: the generator keeps its own), chosen on meta-val classes
    (one repeat, every candidate at once) in each of ``modes`` on its own: per mode the generator
    with its settings and every candidate's row. The rule: the lowest FID among the settings whose samples do not
    copy with confidence (the copy rate's upper bound at ``eval.confidence``, a bootstrap over the
    meta-val classes, <= ``max_copy_rate``: the point estimate just under the line landed above it
    on the test classes), so that the strongest honest generator is the one
    compared; if every setting copies, the one that copies least (the lowest FID would pick the
    most copying one, as it did for the meta-model on the CelebA sample). A mode is judged at the
    settings chosen in it: a baseline's prior sampling at its support sampling's settings was
    sampled where it is weakest (its support candidates all copied on faces, so the least-copying,
    hottest, was chosen for both). lr 0 is a
    candidate only for a generator that starts trained (``pretrain`` as it is, the meta-model after
    its context steps); for ``scratch`` it would be an untrained network, which copies nothing. The temperature only changes sampling:
    each lr adapts once and samples every mode at every temperature from the same adapted state.

    With ``eval.nll_choice_images`` > 0 each lr's NLL is measured too (that many held-out images a
    class, ``eval.nll_choice_samples`` importance samples) and the generator's likelihood is then
    measured at the lr of the lowest one (:attr:`FewShotGenerator.nll_lr`), whatever the mode: a
    density is judged at its best setting as its samples are at theirs, each chosen on meta-val."""
    ev = protocol.eval
    seed = ev.seed + 7
    temperatures = ev.temperatures
    by_nll = ev.nll_choice_images > 0
    own_lrs = [[None] if lrs is None else [lr for lr in lrs if lr > 0 or gen.starts_trained] for gen in gens]
    candidates = [gen.with_settings(lr, gen.temperature).with_nll_lr(None)
                  for gen, mine in zip(gens, own_lrs, strict=True) for lr in mine]
    results = iter(run_generators(candidates, val, val_feats, extractor, protocol, [seed], modes,
                                  score_aug=False, score_nll=by_nll, mapper=mapper, temperatures=temperatures,
                                  nll_budget=(ev.nll_choice_images, ev.nll_choice_samples)))
    chosen = []
    for gen, mine in zip(gens, own_lrs, strict=True):
        runs = [(lr, next(results)[0]) for lr in mine]
        nll_lr = min(runs, key=lambda run: run[1].nll)[0] if by_nll else None
        by_mode = {}
        for mode in _modes(gen, modes):
            table = [{"lr": lr, "temperature": t, "nll": res.nll, "fid": res.metrics[(mode, t)]["fid"],
                      "copy_rate": res.metrics[(mode, t)]["copy_rate"],
                      "copy_bound": copy_rate_bound(res.copies[(mode, t)], ev.confidence, ev.bootstrap_samples, seed)}
                     for lr, res in runs for t in temperatures]
            honest = [row for row in table if row["copy_bound"] <= max_copy_rate]
            best = (min(honest, key=lambda row: row["fid"]) if honest
                    else min(table, key=lambda row: (row["copy_bound"], row["fid"])))
            log.info("%s, %s sampling: lr %s, temperature %g chosen on meta-val%s (NLL, FID, copy rate and its bound "
                     "of each: %s)", gen.name, mode, best["lr"], best["temperature"],
                     f", its NLL at lr {nll_lr}" if by_nll else "", table)
            by_mode[mode] = (gen.with_settings(best["lr"], best["temperature"]).with_nll_lr(nll_lr), table)
        chosen.append(by_mode)
    return chosen
