"""Wall-clock time of each pipeline phase: one recorder per process, nested phases, JSON out.

``with phase("evaluate"): ... with phase("scratch.lr_choice"): ...`` records ``evaluate`` and
``evaluate/scratch.lr_choice``. A phase is ``work`` (what the pipeline is for: training, scoring)
or ``overhead`` (what any run pays whatever its size: imports, servers starting, Ray start-up,
MLflow and DVC calls). Knows nothing of Prefect or MLflow: the flows and the CLI read it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from components.atomic import write_text_atomic

Kind = Literal["work", "overhead"]


@dataclass
class Record:
    name: str  # slash-separated path of nested phases
    seconds: float
    kind: Kind
    start: float  # perf_counter at its start: the table lists phases in the order they began


@dataclass
class Timings:
    records: list[Record] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # perf_counter of named instants
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _stack(self) -> list[str]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    @contextmanager
    def phase(self, name: str, kind: Kind = "work") -> Iterator[None]:
        stack = self._stack()
        full = "/".join([*stack, name])
        stack.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            stack.pop()
            with self._lock:
                self.records.append(Record(full, time.perf_counter() - start, kind, start))

    def add(self, name: str, seconds: float, kind: Kind = "work") -> None:
        """Record a phase measured elsewhere (e.g. a server's start-up), nested under the current one."""
        stack = self._stack()
        if stack and not name.startswith("/".join(stack) + "/"):
            name = "/".join([*stack, name])
        with self._lock:
            self.records.append(Record(name, float(seconds), kind, time.perf_counter() - float(seconds)))

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks[name] = time.perf_counter() if at is None else at

    def add_since(self, mark: str, name: str, kind: Kind = "work") -> None:
        """Record the time since ``mark`` (a no-op when nobody set it: e.g. a flow run by a deployment)."""
        if mark in self.marks:
            self.add(name, time.perf_counter() - self.marks.pop(mark), kind)

    def elapsed(self, mark: str) -> float | None:
        return time.perf_counter() - self.marks[mark] if mark in self.marks else None

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self.marks.clear()

    def summary(self, total_s: float | None = None) -> dict[str, Any]:
        """Every phase (summed when a name repeats), the top-level total and the fixed overhead:
        the overhead phases not nested in another overhead phase."""
        phases: dict[str, dict[str, Any]] = {}
        for r in sorted(self.records, key=lambda r: r.start):
            entry = phases.setdefault(r.name, {"seconds": 0.0, "kind": r.kind, "count": 0})
            entry["seconds"] += r.seconds
            entry["count"] += 1
        overhead_names = {n for n, e in phases.items() if e["kind"] == "overhead"}

        def outer_overhead(name: str) -> bool:
            parts = name.split("/")
            return not any("/".join(parts[:i]) in overhead_names for i in range(1, len(parts)))

        overhead = sum(e["seconds"] for n in overhead_names if outer_overhead(n) for e in [phases[n]])
        for entry in phases.values():
            entry["seconds"] = round(entry["seconds"], 3)
        if total_s is None:  # phases may overlap (concurrent steps): the span from the first start to the last end
            total_s = max((r.start + r.seconds for r in self.records), default=0.0) - min(
                (r.start for r in self.records), default=0.0)
        return {"total_s": round(total_s, 3), "overhead_s": round(overhead, 3), "phases": phases}



TIMINGS = Timings()  # the process's recorder


def phase(name: str, kind: Kind = "work"):  # noqa: ANN201 - a context manager
    return TIMINGS.phase(name, kind)


def metric_key(name: str) -> str:
    """``evaluate/features (dvc repro)`` -> ``timing.evaluate.features_dvc_repro``: MLflow allows
    letters, digits, ``_-. /:`` in a key; the dots keep the phases' nesting."""
    parts = (re.sub(r"[^A-Za-z0-9_-]+", "_", part.strip()).strip("_") for part in name.split("/"))
    return "timing." + ".".join(parts)


def write(path: Path, summary: dict[str, Any]) -> Path:
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
    return path


def table(summary: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(indented name, seconds, kind) rows in order, for a console table."""
    rows = []
    for name, entry in summary["phases"].items():
        depth = name.count("/")
        rows.append(("  " * depth + name.rsplit("/", 1)[-1], entry["seconds"], entry["kind"]))
    return rows
