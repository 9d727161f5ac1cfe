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
    """In this process, with ``threads`` torch threads (0: as the process has them)."""

    name = "in-process"

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        from components.threads import torch_threads

        with torch_threads(self.threads):
            return [fn(shared, item) for item in items]


def _run_chunk(fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any], threads: int) -> list[Any]:
    torch.set_num_threads(threads)
    return [fn(shared, item) for item in items]


class RayMapper:
    """Items in chunks (about ``chunks_per_cpu`` per CPU of the cluster; chunk i holds every n-th
    item from the i-th) as Ray tasks of ``cpus_per_task`` CPUs; ``shared`` (models, data) goes to the
    object store once, each task runs ``threads`` torch threads (0: one per CPU it holds). The
    results come back in the items' order."""

    name = "ray"

    def __init__(self, cpus_per_task: float = 1.0, chunks_per_cpu: int = 2, threads: int = 0) -> None:
        self.cpus_per_task, self.chunks_per_cpu, self.threads = cpus_per_task, chunks_per_cpu, threads

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        import ray

        if not items:
            return []
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        n_chunks = min(len(items), max(1, int(cpus / self.cpus_per_task) * self.chunks_per_cpu))
        remote = ray.remote(num_cpus=self.cpus_per_task, max_retries=2)(_run_chunk)
        ref = ray.put(shared)
        threads = self.threads or max(1, int(self.cpus_per_task))
        # strided, not contiguous: items come grouped by generator, whose costs differ (a `scratch`
        # class trains 200 steps, a replayed one none), and contiguous chunks left one CPU idle
        futures = [remote.remote(fn, ref, list(items[i::n_chunks]), threads) for i in range(n_chunks)]
        out: list[Any] = [None] * len(items)
        for i, chunk in enumerate(ray.get(futures)):
            out[i::n_chunks] = chunk
        return out


def mapper_for(distributed: bool, connect: Callable[[], None], threads: int = 0) -> Mapper:
    """Ray when ``distributed`` (``connect`` joins or starts the cluster first), else in-process;
    ``threads``: each item's torch threads (0: the default of where it runs)."""
    if not distributed:
        return LocalMapper(threads)
    from components.timing import phase

    with phase("ray start-up", "overhead"):
        connect()
    return RayMapper(threads=threads)
