"""The DVC operations metagen runs, through DVC's Python API (``dvc.repo.Repo``)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from components.errors import DataError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _env_for_stages(root: Path, threads: int | None = None) -> Iterator[None]:
    """Run DVC from the repository root (it resolves targets against the working directory), with
    this interpreter's console scripts (``metagen prepare``) on PATH; ``threads``: the stages'
    commands run that many OpenMP/MKL threads (torch's intra-op threads)."""
    thread_vars = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    old_threads = {k: os.environ.get(k) for k in thread_vars}
    if threads is not None:
        os.environ.update(dict.fromkeys(thread_vars, str(threads)))
    old_cwd = os.getcwd()
    os.chdir(root)
    old_path = os.environ.get("PATH", "")
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + old_path
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    dvc_logger = logging.getLogger("dvc")
    old_level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        os.environ["PATH"] = old_path
        for key, value in old_threads.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        dvc_logger.setLevel(old_level)
        os.chdir(old_cwd)


def _repo(root: Path):  # noqa: ANN202 - dvc has no public type here
    from dvc.repo import Repo

    try:
        return Repo(str(root))
    except Exception as err:  # dvc raises NotDvcRepoError and friends
        raise DataError(f"{root}: not a DVC repository ({err}); run `dvc init` there") from None


def dvc_add(root: Path, target: str) -> None:
    with _env_for_stages(root):
        repo = _repo(root)
        try:
            repo.add(target)
        finally:
            repo.close()


def dvc_repro(root: Path, stage: str, threads: int | None = None) -> None:
    """``dvc repro stage`` (``threads``: torch threads of the stage's command)."""
    from dvc.exceptions import ReproductionError

    with _env_for_stages(root, threads):
        repo = _repo(root)
        try:
            repo.reproduce(targets=[stage])
        except ReproductionError as err:
            cause = err.__cause__ or err
            raise DataError(f"dvc repro {stage} failed: {cause}") from None
        finally:
            repo.close()


def dvc_push(root: Path, remote: str | None = None) -> int:
    with _env_for_stages(root):
        repo = _repo(root)
        try:
            return int(repo.push(remote=remote) or 0)
        finally:
            repo.close()


def dvc_pull(root: Path, targets: list[str] | None = None, remote: str | None = None) -> None:
    with _env_for_stages(root):
        repo = _repo(root)
        try:
            repo.pull(targets=targets, remote=remote)
        finally:
            repo.close()
