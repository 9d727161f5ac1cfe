"""The few-shot evaluation protocol: adapt on K images of each meta-test class, then score.

Per model and repeat (a seeded draw of the K supports of every class):
* ``nll``: an importance-weighted estimate (IWAE, ``eval.nll_samples``) of -log p(x) of the class's
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from components.data.prepare import Split
from components.errors import MetagenError
from components.evaluation.extractors import FeatureExtractor, accuracy, train_classifier
from components.evaluation.frechet import cached_statistics, frechet_distance, kid, statistics
from components.evaluation.memorisation import copy_rate, prdc
from components.meta.baselines import MODES, FewShotGenerator, FinetuneGenerator
from components.params import EvalParams
from components.timing import phase

log = logging.getLogger(__name__)
SAMPLE_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage", "copy_rate", "aug_acc")


@dataclass(frozen=True)
class Protocol:
    eval: EvalParams
    k_shot: int
    test_sha256: str

    @property
    def digest(self) -> str:
        fields = self.eval.model_dump(
            mode="json",
            include={"seed", "repeats", "samples_per_class", "temperature", "kid_subsets", "kid_subset_size",
                     "augment_steps", "max_classes", "nll_samples", "nll_max_images", "prdc_k", "copy_percentile"},
        )
        blob = json.dumps({"eval": fields, "k_shot": self.k_shot, "test": self.test_sha256}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
class RepeatResult:
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> metric -> value
    nll: float | None = None
    samples: dict[str, list[Tensor]] = field(default_factory=dict)


def score_samples(
    generated: list[Tensor], split: Split, episode: Episode, real_feats: np.ndarray, extractor: FeatureExtractor,
    protocol: Protocol, seed: int, name: str, score_aug: bool = True, stats_cache: Path | None = None,
) -> dict[str, float]:
    """Every sample metric of one mode (``generated[c]``: class c's images) against held-out reals."""
    fake = torch.cat(generated)
    if not torch.isfinite(fake).all():
        raise MetagenError(f"model {name!r} generated images with NaN or inf; refusing to compute FID")
    with phase("features"):
        fake_feats = extractor.features(fake)
    held = np.concatenate(episode.heldout)
    real = real_feats[held]
    s_fake = statistics(fake_feats, f"{name} generated features")
    if stats_cache is not None:  # keyed by test data, extractor, protocol and this repeat's supports
        key = f"{protocol.test_sha256[:16]}-test-{extractor.digest}-{protocol.digest}-seed{seed}"
        s_real = cached_statistics(stats_cache, key, lambda: real)
    else:
        s_real = statistics(real, "real features")
    out = {"fid": frechet_distance(s_fake.mu, s_fake.sigma, s_real.mu, s_real.sigma)}
    out["kid"], _ = kid(fake_feats, real, protocol.eval.kid_subsets, protocol.eval.kid_subset_size, seed)
    out.update(prdc(real, fake_feats, protocol.eval.prdc_k))
    bounds = np.cumsum([0] + [len(g) for g in generated])
    out["copy_rate"] = copy_rate(
        [fake_feats[bounds[c] : bounds[c + 1]] for c in range(len(generated))],
        [real_feats[s] for s in episode.supports], [real_feats[h] for h in episode.heldout],
        protocol.eval.copy_percentile)
    out["aug_acc"] = float("nan")
    if score_aug:
        with phase("augmentation classifier"):
            labels = torch.cat([torch.full((len(g),), c, dtype=torch.long) for c, g in enumerate(generated)])
            clf = train_classifier(fake, labels, len(generated), protocol.eval.augment_steps, seed, width=32)
            out["aug_acc"] = accuracy(clf, torch.from_numpy(split.images[held]),
                                      torch.from_numpy(split.labels[held]))
    return out


def _modes(gen: FewShotGenerator, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The wanted sampling modes the generator has (the replay reference has its own one)."""
    return tuple(m for m in wanted if m in gen.modes) or gen.modes


def run_repeat(
    gen: FewShotGenerator, split: Split, episode: Episode, real_feats: np.ndarray,
    extractor: FeatureExtractor, protocol: Protocol, seed: int, modes: tuple[str, ...] = MODES,
    score_aug: bool = True, score_nll: bool = True, stats_cache: Path | None = None,
) -> RepeatResult:
    """One repeat of the protocol for one generator."""
    out = RepeatResult()
    m, ev = protocol.eval.samples_per_class, protocol.eval
    modes = _modes(gen, modes)
    torch_gen = torch.Generator().manual_seed(seed)
    per_mode: dict[str, list[Tensor]] = {mode: [] for mode in modes}
    nlls = []
    for c in range(len(split.classes)):
        support = torch.from_numpy(split.images[episode.supports[c]])
        with phase("adapt"):
            adapted = gen.adapt(support, torch_gen)
        if score_nll:
            real = torch.from_numpy(split.images[episode.heldout[c][: ev.nll_max_images]])
            with phase("nll"):
                nll = adapted.nll(real, ev.nll_samples, torch.Generator().manual_seed(seed + 7919 * (c + 1)))
            if nll is not None:
                nlls.append(nll)
        with phase("sample"):
            for mode in modes:
                per_mode[mode].append(adapted.sample(m, mode, torch_gen, ev.temperature))
    for mode in modes:
        out.metrics[mode] = score_samples(per_mode[mode], split, episode, real_feats, extractor, protocol, seed,
                                          gen.name, score_aug, stats_cache)
        out.samples[mode] = per_mode[mode]
    out.nll = float(np.mean(nlls)) if nlls else None
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def evaluate_generator(
    gen: FewShotGenerator, split: Split, real_feats: np.ndarray, extractor: FeatureExtractor,
    protocol: Protocol, modes: tuple[str, ...] = MODES, stats_cache: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[Tensor]]]:
    """Rows (one per sampling mode) with mean/std over ``eval.repeats`` and the first repeat's samples."""
    repeats = []
    for r in range(protocol.eval.repeats):
        seed = protocol.eval.seed + 1000 * r
        episode = draw_episode(split, protocol.k_shot, seed)
        repeats.append(run_repeat(gen, split, episode, real_feats, extractor, protocol, seed, modes,
                                  stats_cache=stats_cache))
    rows = []
    nll = [r.nll for r in repeats if r.nll is not None]
    nll_m, nll_s = _mean_std(nll) if nll else (None, None)
    for mode in _modes(gen, modes):
        row: dict[str, Any] = {
            "model": gen.name, "sampling": mode, "adapt_steps": gen.steps, "adapt_lr": gen.lr,
            "nll_mean": nll_m, "nll_std": nll_s,
        }
        for metric in SAMPLE_METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([r.metrics[mode][metric] for r in repeats])
        for metric in ("precision", "recall", "density", "coverage", "copy_rate"):
            row[metric] = row[f"{metric}_mean"]
        rows.append(row)
    return rows, repeats[0].samples


def choose_lr(
    gen: FinetuneGenerator, val: Split, val_feats: np.ndarray, extractor: FeatureExtractor, protocol: Protocol,
    lrs: list[float], mode: str, max_copy_rate: float,
) -> tuple[FinetuneGenerator, dict[str, dict[str, float]]]:
    """The baseline's adaptation lr on meta-val classes (one repeat): the lowest FID among the lrs
    whose samples do not copy (copy rate <= ``max_copy_rate``), so that the strongest honest
    generator is the one compared; if every lr copies, the lowest FID (and the row says it copies)."""
    scores: dict[str, dict[str, float]] = {}
    seed = protocol.eval.seed + 7
    episode = draw_episode(val, protocol.k_shot, seed)
    for lr in lrs:
        res = run_repeat(replace(gen, lr=lr), val, episode, val_feats, extractor, protocol, seed, (mode,),
                         score_aug=False, score_nll=False)
        scores[f"{lr:g}"] = {"fid": res.metrics[mode]["fid"], "copy_rate": res.metrics[mode]["copy_rate"]}
    honest = [lr for lr in lrs if scores[f"{lr:g}"]["copy_rate"] <= max_copy_rate] or list(lrs)
    best = min(honest, key=lambda lr: scores[f"{lr:g}"]["fid"])
    log.info("%s: adaptation lr %g chosen on meta-val (FID and copy rate by lr: %s)", gen.name, best, scores)
    return replace(gen, lr=best), scores
