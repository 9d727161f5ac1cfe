"""Binarized images, as the field models binary-like data (Omniglot): each pixel is 1 with its grey
level's probability. In training anew at every draw (dynamic binarization, a regulariser); for
evaluation once, seeded, so that every model is scored on the same binary images and the Bernoulli
NLL is the likelihood of a distribution over them, in nats.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from components.data.prepare import Split


def binarize(images: Tensor, generator: torch.Generator) -> Tensor:
    """Dynamic binarization: a fresh Bernoulli draw of every pixel."""
    return torch.bernoulli(images.clamp(0, 1), generator=generator)


def binarized_split(split: Split, seed: int) -> Split:
    """The split binarized once: the same ``seed`` gives the same binary images on any machine."""
    key = int.from_bytes(hashlib.sha256(f"{seed}:{','.join(split.classes)}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(key)
    images = (rng.random(split.images.shape) < split.images).astype(split.images.dtype)
    return Split(images, split.labels, split.classes)
