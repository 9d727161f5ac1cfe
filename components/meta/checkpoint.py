"""Checkpoints: state dicts + step + RNG + history, saved atomically, loaded with weights_only=True."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from components.atomic import atomic_file
from components.errors import CheckpointError, MetagenError

FORMAT = 1
FILENAME = "checkpoint.pt"
LOCKFILE = ".training.lock"


@contextmanager
def training_folder(folder: Path) -> Iterator[Path]:
    """The folder a training writes its checkpoint to, held for the training alone: a second one
    (a scheduled retrain beside a manual run) would overwrite the first one's result. An OS lock
    (``flock``): released when the holder exits, even killed, so a crash leaves nothing to clean."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "an unknown process"
            raise MetagenError(f"{folder} is in use by another training ({holder}): wait for it to finish, or "
                               "give this one another folder (--set train.checkpoint_dir=...)") from None
        os.ftruncate(fd, 0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        os.pwrite(fd, f"pid {os.getpid()}, `{command}`, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield folder
    finally:
        if created and [p.name for p in folder.iterdir()] == [LOCKFILE]:  # nothing written (interrupted)
            (folder / LOCKFILE).unlink()
            folder.rmdir()
        os.close(fd)  # closing releases the lock


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in several types
        raise CheckpointError(f"{path}: not a readable metagen checkpoint ({err.__class__.__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a metagen checkpoint of format {FORMAT}")
    return state
