"""Few-shot tasks: one class, K support and Q query images, drawn from a split held in memory.

With ``rotate_classes`` each task's class is rotated by a random multiple of 90 degrees, the
usual Omniglot augmentation that multiplies the training classes by four; from step
``rotate_until`` on (``meta.upright_steps`` before the end) tasks are upright again, the classes as
the generator will be asked for them. Validation tasks are always upright, with their full context.

A meta-batch is a pure function of ``(seed, step)``: the same seed gives the same tasks, and a
Ray worker can take its share (``rank::world``) of exactly the batch one worker would draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from components.data.binarize import binarize
from components.data.prepare import Split
from components.errors import DataError


@dataclass(frozen=True)
class TaskBatch:
    """B tasks. ``eps_*`` is the reparameterisation noise, drawn with the tasks (pure ELBOs)."""

    support: Tensor      # (B, K, C, H, W)
    query: Tensor        # (B, Q, C, H, W)
    eps_inner: Tensor    # (B, steps, K + Q, latent): inner-loop noise (Reptile adapts on K + Q)
    eps_query: Tensor    # (B, Q, latent)
    classes: tuple[int, ...]
    keep_context: Tensor | None = None  # (B,) 1.0, or 0.0 for a task that starts from a null context

    def keep(self) -> Tensor:
        return self.keep_context if self.keep_context is not None else torch.ones(len(self), dtype=self.support.dtype)

    def __len__(self) -> int:
        return self.support.shape[0]

    def shard(self, rank: int, world: int) -> TaskBatch:
        idx = list(range(rank, len(self), world))
        return TaskBatch(
            self.support[idx], self.query[idx], self.eps_inner[idx], self.eps_query[idx],
            tuple(self.classes[i] for i in idx), None if self.keep_context is None else self.keep_context[idx],
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        def conv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype or t.dtype)

        return TaskBatch(conv(self.support), conv(self.query), conv(self.eps_inner), conv(self.eps_query), self.classes,
                         None if self.keep_context is None else conv(self.keep_context))


class TaskSampler:
    def __init__(self, split: Split, k_shot: int, k_query: int, latent_dim: int, inner_steps: int, seed: int,
                 rotate_classes: bool = False, context_dropout: float = 0.0, rotate_until: int | None = None,
                 binarize: bool = False) -> None:
        self.per_class = [torch.from_numpy(np.ascontiguousarray(a)) for a in split.by_class()]
        too_small = [split.classes[i] for i, a in enumerate(self.per_class) if len(a) < k_shot + k_query]
        if too_small:
            raise DataError(
                f"classes {too_small[:5]} have fewer than k_shot + k_query = {k_shot + k_query} images"
            )
        self.classes = split.classes
        self.k_shot, self.k_query = k_shot, k_query
        self.latent_dim, self.inner_steps, self.seed = latent_dim, inner_steps, seed
        self.rotate_classes = rotate_classes
        self.rotate_until = rotate_until  # steps from here on draw upright classes (None: rotate throughout)
        self.context_dropout = context_dropout
        self.binarize = binarize  # every task's images a fresh binary draw (dynamic binarization)

    def sample(self, step: int, batch_size: int) -> TaskBatch:
        rng = np.random.default_rng([self.seed, step])
        n = len(self.per_class)
        classes = rng.choice(n, size=batch_size, replace=batch_size > n)
        rotate = self.rotate_classes and (self.rotate_until is None or step < self.rotate_until)
        sup, qry = [], []
        for c in classes:
            imgs = self.per_class[int(c)]
            idx = torch.from_numpy(rng.permutation(len(imgs))[: self.k_shot + self.k_query])
            chosen = imgs[idx]
            if rotate:  # a class rotated by 90, 180 or 270 degrees is a new class (x4 classes)
                chosen = torch.rot90(chosen, int(rng.integers(0, 4)), dims=(2, 3))
            sup.append(chosen[: self.k_shot])
            qry.append(chosen[self.k_shot :])
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        eps_inner = torch.randn(
            batch_size, max(self.inner_steps, 1), self.k_shot + self.k_query, self.latent_dim, generator=gen
        )
        eps_query = torch.randn(batch_size, self.k_query, self.latent_dim, generator=gen)
        keep = None
        if self.context_dropout > 0:  # drawn last: without dropout the batch is what it always was
            keep = torch.from_numpy((rng.random(batch_size) >= self.context_dropout).astype(np.float32))
        support, query = torch.stack(sup), torch.stack(qry)
        if self.binarize:  # after every other draw: without it the batch is what it always was
            pixels = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            support, query = binarize(support, pixels), binarize(query, pixels)
        return TaskBatch(support, query, eps_inner, eps_query, tuple(int(c) for c in classes), keep)
