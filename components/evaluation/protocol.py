"""The few-shot evaluation protocol (after LoFGAN's): adapt on K images of each meta-test class,
generate M images, score pooled FID / KID against the class's real images outside the supports,
the query negative ELBO, and the accuracy of a classifier trained on the generated images and
tested on the real ones (F2GAN's augmentation measure). Repeated over seeds: mean and std.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from components.data.prepare import Split
from components.errors import MetagenError
from components.evaluation.extractors import FeatureExtractor, accuracy, train_classifier
from pathlib import Path

from components.evaluation.frechet import cached_statistics, frechet_distance, kid, statistics
from components.meta.baselines import FewShotGenerator
from components.models.vae import neg_elbo, sample
from components.params import EvalParams

log = logging.getLogger(__name__)
MODES = ("prior", "support")
REPLAY = "support_replay"


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
                     "augment_steps"},
        )
        blob = json.dumps({"eval": fields, "k_shot": self.k_shot, "test": self.test_sha256}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    fid: dict[str, float] = field(default_factory=dict)
    kid: dict[str, float] = field(default_factory=dict)
    aug_acc: dict[str, float] = field(default_factory=dict)
    query_nll: float | None = None
    samples: dict[str, list[Tensor]] = field(default_factory=dict)


def _query_nll(gen: FewShotGenerator, params: dict, real: Tensor, seed: int, max_images: int = 64) -> float:
    x = real[:max_images]
    eps = torch.randn(len(x), gen.model.cfg.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float(neg_elbo(gen.model, params, x, eps).mean())


def _score(
    generated: list[Tensor], split: Split, episode: Episode, real_feats: np.ndarray, extractor: FeatureExtractor,
    protocol: Protocol, seed: int, name: str, score_aug: bool = True, stats_cache: Path | None = None,
) -> tuple[float, float, float]:
    fake = torch.cat(generated)
    if not torch.isfinite(fake).all():
        raise MetagenError(f"model {name!r} generated images with NaN or inf; refusing to compute FID")
    fake_feats = extractor.features(fake)
    held = np.concatenate(episode.heldout)
    real = real_feats[held]
    s_fake = statistics(fake_feats, f"{name} generated features")
    if stats_cache is not None:  # keyed by test data, extractor, protocol and this repeat's supports
        key = f"{protocol.test_sha256[:16]}-test-{extractor.digest}-{protocol.digest}-seed{seed}"
        s_real = cached_statistics(stats_cache, key, lambda: real)
    else:
        s_real = statistics(real, "real features")
    fid = frechet_distance(s_fake.mu, s_fake.sigma, s_real.mu, s_real.sigma)
    kid_mean, _ = kid(fake_feats, real, protocol.eval.kid_subsets, protocol.eval.kid_subset_size, seed)
    if not score_aug:
        return fid, kid_mean, float("nan")
    labels = torch.cat([torch.full((len(g),), c, dtype=torch.long) for c, g in enumerate(generated)])
    clf = train_classifier(fake, labels, len(generated), protocol.eval.augment_steps, seed)
    real_x = torch.from_numpy(split.images[held])
    real_y = torch.from_numpy(split.labels[held])
    return fid, kid_mean, accuracy(clf, real_x, real_y)


def run_repeat(
    gen: FewShotGenerator | None, split: Split, episode: Episode, real_feats: np.ndarray,
    extractor: FeatureExtractor, protocol: Protocol, steps: int, lr: float | None, seed: int,
    modes: tuple[str, ...] = MODES, score_aug: bool = True, stats_cache: Path | None = None,
) -> RepeatResult:
    """One repeat of the protocol for one generator (``None``: the support-replay reference)."""
    out = RepeatResult()
    m = protocol.eval.samples_per_class
    torch_gen = torch.Generator().manual_seed(seed)
    per_mode: dict[str, list[Tensor]] = {mode: [] for mode in modes}
    nlls = []
    for c in range(len(split.classes)):
        support = torch.from_numpy(split.images[episode.supports[c]])
        if gen is None:
            reps = support.repeat((m + len(support) - 1) // len(support), 1, 1, 1)[:m]
            for mode in modes:
                per_mode[mode].append(reps)
            continue
        adapted = gen.adapt(support, steps, lr, torch_gen)
        real = torch.from_numpy(split.images[episode.heldout[c]])
        nlls.append(_query_nll(gen, adapted, real, seed + c))
        for mode in modes:
            per_mode[mode].append(sample(gen.model, adapted, m, torch_gen, mode, support, protocol.eval.temperature))
    name = gen.name if gen is not None else REPLAY
    for mode in modes:
        fid, kid_mean, acc = _score(per_mode[mode], split, episode, real_feats, extractor, protocol, seed, name,
                                    score_aug, stats_cache)
        out.fid[mode], out.kid[mode], out.aug_acc[mode] = fid, kid_mean, acc
        out.samples[mode] = per_mode[mode]
    out.query_nll = float(np.mean(nlls)) if nlls else None
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def evaluate_generator(
    gen: FewShotGenerator | None, split: Split, real_feats: np.ndarray, extractor: FeatureExtractor,
    protocol: Protocol, steps: int, lr: float | None, modes: tuple[str, ...] = MODES,
    on_repeat: Callable[[int], None] | None = None, stats_cache: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[Tensor]]]:
    """Rows (one per sampling mode) with mean/std over ``eval.repeats`` and the first repeat's samples."""
    repeats = []
    for r in range(protocol.eval.repeats):
        seed = protocol.eval.seed + 1000 * r
        episode = draw_episode(split, protocol.k_shot, seed)
        repeats.append(run_repeat(gen, split, episode, real_feats, extractor, protocol, steps, lr, seed, modes,
                                  stats_cache=stats_cache))
        if on_repeat is not None:
            on_repeat(r)
    name = gen.name if gen is not None else REPLAY
    rows = []
    for mode in modes:
        fid_m, fid_s = _mean_std([r.fid[mode] for r in repeats])
        kid_m, kid_s = _mean_std([r.kid[mode] for r in repeats])
        acc_m, acc_s = _mean_std([r.aug_acc[mode] for r in repeats])
        nll = [r.query_nll for r in repeats if r.query_nll is not None]
        nll_m, nll_s = _mean_std(nll) if nll else (None, None)
        rows.append({
            "model": name, "sampling": mode if gen is not None else "replay", "adapt_steps": steps, "adapt_lr": lr,
            "fid_mean": fid_m, "fid_std": fid_s, "kid_mean": kid_m, "kid_std": kid_s,
            "query_nll_mean": nll_m, "query_nll_std": nll_s, "aug_acc_mean": acc_m, "aug_acc_std": acc_s,
        })
        if gen is None:
            break
    return rows, repeats[0].samples


def choose_lr(
    gen: FewShotGenerator, val: Split, val_feats: np.ndarray, extractor: FeatureExtractor, protocol: Protocol,
    steps: int, lrs: list[float], mode: str,
) -> tuple[float, dict[float, float]]:
    """Pick the adaptation learning rate with the lowest FID on meta-val classes (one repeat)."""
    scores: dict[float, float] = {}
    episode = draw_episode(val, protocol.k_shot, protocol.eval.seed + 7)
    for lr in lrs:
        res = run_repeat(gen, val, episode, val_feats, extractor, protocol, steps, lr, protocol.eval.seed + 7, (mode,),
                         score_aug=False)
        scores[lr] = res.fid[mode]
    best = min(scores, key=lambda k: scores[k])
    log.info("%s: adaptation lr %g chosen on meta-val (FID by lr: %s)", gen.name, best, scores)
    return best, scores
