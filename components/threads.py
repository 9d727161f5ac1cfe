"""Torch threads for work that runs beside meta-training on the same machine.

On a small CPU machine, processes whose torch thread counts add up to more than its cores slow
each other down far beyond their share: OpenMP teams wait for threads that are descheduled. On 2
cores, a 1-thread VAE training step beside a 2-thread one took 124 ms instead of 83, the 2-thread
one 164 ms instead of 59; beside another 1-thread one, 88 and 96 ms (README "Benchmarks"). So the work
that `metagen run` does while the model trains takes the cores the training leaves, split evenly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from components.net import ray_address
from components.params import TrainParams


def training_cpus_here(train: TrainParams) -> float:
    """CPUs of this machine that Ray Train's workers hold: none when it trains on a Ray cluster
    elsewhere (``RAY_ADDRESS`` / ``train.ray_address``)."""
    return 0.0 if ray_address(train) else train.num_workers * train.cpus_per_worker


def threads_beside_training(train: TrainParams, local: bool, streams: int) -> int:
    """Torch threads for each of ``streams`` concurrent pieces of work beside the training. An
    in-process training (``local``) shares this process's setting: it counts as one more stream."""
    cpus, streams = os.cpu_count() or 1, max(1, streams)
    if local:
        return max(1, cpus // (streams + 1))
    return max(1, int((cpus - training_cpus_here(train)) // streams))


def figure_threads(train: TrainParams, otherwise: int = 0) -> int:
    """The torch threads of work whose result is a figure (a training, a fine-tuning, a score):
    ``train.num_threads``, fixed (1 by default), since the thread count changes the order of float
    sums and a training amplifies that: an extractor trained with 1 thread and with 2 differ, and
    every FID with it. 0 (opt-in): ``otherwise`` (0: the process's default), faster on large
    machines, the figures then depending on the machine."""
    return train.num_threads or otherwise


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """This process's torch intra-op threads set to ``threads`` for the block, then restored
    (0: left as they are)."""
    if threads <= 0:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
