"""What every flow does first: validate params.yaml once, resolve the project root."""

from __future__ import annotations

from pathlib import Path

from components.params import Params, load_params


def load(root: str, params_path: str, overrides: list[str] | None) -> tuple[Path, Params]:
    base = Path(root).resolve()
    path = Path(params_path)
    return base, load_params(path if path.is_absolute() else base / path, overrides or [])
