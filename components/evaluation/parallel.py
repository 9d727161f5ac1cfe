"""Where the evaluation's independent pieces run: in this process, or spread over a Ray cluster.

The protocol's work is a list of independent items (one class of one repeat of one generator; one
sampling mode's scores). Every item is seeded by what it is, not by when it runs, so a
:class:`RayMapper` over any number of workers and nodes returns exactly what :class:`LocalMapper`
returns, in the same order. Ray tasks run one torch thread each (``num_cpus=1``): on a small CPU
machine two single-threaded processes do more than one process with two threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


class Mapper(Protocol):
    name: str

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        """``[fn(shared, item) for item in items]``, wherever it runs."""


class LocalMapper:
    name = "in-process"

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        return [fn(shared, item) for item in items]


def _run_chunk(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], threads: int) -> list[Any]:
    torch.set_num_threads(threads)
    return [fn(shared, item) for item in items]


class RayMapper:
    """Items in chunks (about ``chunks_per_cpu`` per CPU of the cluster) as Ray tasks of
    ``cpus_per_task`` CPUs; ``shared`` (models, data) goes to the object store once."""

    name = "ray"

    def __init__(self, cpus_per_task: float = 1.0, chunks_per_cpu: int = 2) -> None:
        self.cpus_per_task, self.chunks_per_cpu = cpus_per_task, chunks_per_cpu

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        import ray

        if not items:
            return []
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        n_chunks = min(len(items), max(1, int(cpus / self.cpus_per_task) * self.chunks_per_cpu))
        bounds = [round(i * len(items) / n_chunks) for i in range(n_chunks + 1)]
        remote = ray.remote(num_cpus=self.cpus_per_task, max_retries=2)(_run_chunk)
        ref = ray.put(shared)
        threads = max(1, int(self.cpus_per_task))
        futures = [remote.remote(fn, ref, items[bounds[i] : bounds[i + 1]], threads) for i in range(n_chunks)]
        return [result for chunk in ray.get(futures) for result in chunk]


def mapper_for(distributed: bool, connect: Callable[[], None]) -> Mapper:
    """Ray when ``distributed`` (``connect`` joins or starts the cluster first), else in-process."""
    if not distributed:
        return LocalMapper()
    from components.timing import phase

    with phase("ray start-up", "overhead"):
        connect()
    return RayMapper()
