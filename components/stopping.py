"""Stopping a meta-training early, from this process, for a reason the user must read.

Work that runs beside the training (the feature extractor) can find that the run's figures would
not be trusted: it calls :func:`request_stop` with the message, the training loop ends at its next
meta-step (in-process, or on every Ray Train worker through
:func:`components.training.stop_flag_for_workers`) and the training raises :class:`TrainingStopped` with that message, instead
of finishing a model nobody can evaluate.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from components.errors import MetagenError

_lock = threading.Lock()
_requested = threading.Event()
_reason: list[str] = []
_scopes: list[int] = []  # open :func:`stoppable` blocks


@contextmanager
def stoppable() -> Iterator[None]:
    """The block in which :func:`request_stop` stops a training; none is pending before or after."""
    clear_stop()
    _scopes.append(1)
    try:
        yield
    finally:
        _scopes.pop()
        clear_stop()


class TrainingStopped(MetagenError):
    """The training was stopped by :func:`request_stop`; the message is its reason."""


def request_stop(reason: str) -> None:
    """Stop the training of the open :func:`stoppable` block (none open: nothing to stop)."""
    with _lock:
        if _scopes and not _requested.is_set():
            _reason.append(reason)
            _requested.set()


def stop_requested_wait(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for :func:`request_stop`; whether it came."""
    return _requested.wait(timeout)


def stop_reason() -> str | None:
    with _lock:
        return _reason[0] if _reason else None


def clear_stop() -> None:
    with _lock:
        _reason.clear()
        _requested.clear()


def raise_if_stopped(step: int) -> None:
    reason = stop_reason()
    if reason is not None:
        raise TrainingStopped(f"{reason} (training stopped at meta-step {step})")


class StopFlag:
    """A Ray actor's body (0 CPUs; a plain class, so its process imports nothing heavy): the reason,
    once set; the training workers read it about once a second."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason

    def get(self) -> str | None:
        return self.reason
