"""The data version that every MLflow run carries: DVC md5s, git commit, dirty flag."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class DataVersion:
    raw_md5: str | None        # md5 of data/ from data.dvc
    prepared_md5: str | None   # md5 of prepared/ from dvc.lock
    git_commit: str | None
    git_dirty: bool | None

    @property
    def short(self) -> str:
        return f"raw={(self.raw_md5 or 'none')[:12]} prepared={(self.prepared_md5 or 'none')[:12]}"

    def as_tags(self) -> dict[str, str]:
        return {f"data.{k}": str(v) for k, v in asdict(self).items()}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def raw_md5(root: Path, dvc_file: str = "data.dvc") -> str | None:
    outs = _read_yaml(root / dvc_file).get("outs") or []
    return outs[0].get("md5") if outs else None


def stage_out_md5(root: Path, stage: str, out: str) -> str | None:
    lock = _read_yaml(root / "dvc.lock")
    for item in (lock.get("stages", {}).get(stage, {}) or {}).get("outs", []) or []:
        if item.get("path") == out:
            return item.get("md5")
    return None


def _git(root: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip()


def data_version(root: Path, prepared_dir: str = "prepared") -> DataVersion:
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return DataVersion(
        raw_md5=raw_md5(root),
        prepared_md5=stage_out_md5(root, "prepare", prepared_dir),
        git_commit=commit,
        git_dirty=None if status is None else bool(status),
    )
