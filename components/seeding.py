"""The process's global torch RNG, held while a model is built.

torch's module initialisers draw from one global RNG per process, and `metagen run` builds models
in several threads of one process at once: the `pretrain` baseline beside the extractor's check
(pytorch-fid's Inception architecture, 24M freshly initialised weights) and the training's driver.
A seeded build (fork the RNG, seed it, initialise) that another thread's build draws from halfway
starts from other weights: two runs of the same settings trained two different `pretrain`
baselines (faces: 5.471 and 5.135 bits/dim). Every build therefore holds one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_GLOBAL_RNG = threading.RLock()


@contextmanager
def global_rng(seed: int | None = None) -> Iterator[None]:
    """The global torch RNG held by this thread for the block; with ``seed``, forked and seeded
    (the RNG's state restored after). Wrap every module construction that draws from it."""
    with _GLOBAL_RNG:
        if seed is None:
            yield
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
