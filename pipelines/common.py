"""What every flow does first: take the params validated once by its caller (the CLI, the parent
flow), or validate params.yaml when it is the entry point itself (a Prefect deployment)."""

from __future__ import annotations

from pathlib import Path

from components.params import Params, load_params


def resolve(root: str, params_path: str, overrides: list[str] | None, params: Params | None) -> tuple[Path, Params]:
    base = Path(root).resolve()
    if params is not None:
        return base, params
    path = Path(params_path)
    return base, load_params(path if path.is_absolute() else base / path, overrides or [])
