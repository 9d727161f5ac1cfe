"""Edit values in params.yaml in place, keeping its comments (like ``dvc exp run --set-param``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from components.atomic import write_text_atomic
from components.errors import ParamsError
from components.params import overlay_updates, read_params_dict, set_path, validate_params


def _dump_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def set_values_in_text(text: str, updates: dict[str, Any]) -> str:
    lines = text.splitlines(keepends=True)
    for dotted, value in updates.items():
        keys = dotted.split(".")
        start, end, indent = 0, len(lines), 0
        for depth, key in enumerate(keys):
            pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}:(?P<sp>[ \t]*)(?P<val>[^#\n]*?)(?P<cm>[ \t]+#.*)?$")
            found = None
            for i in range(start, end):
                m = pattern.match(lines[i].rstrip("\n"))
                if m:
                    found = (i, m)
                    break
            if found is None:
                raise ParamsError(f"cannot find {dotted!r} in params.yaml to update it")
            i, m = found
            if depth == len(keys) - 1:
                comment = m.group("cm") or ""
                lines[i] = f"{' ' * indent}{key}: {_dump_scalar(value)}{comment}\n"
            else:
                start = i + 1
                for j in range(start, end):
                    stripped = lines[j].strip()
                    if stripped and not stripped.startswith("#") and len(lines[j]) - len(lines[j].lstrip(" ")) <= indent:
                        end = j
                        break
                indent += 2
    return "".join(lines)


def update_params_file(path: Path, updates: dict[str, Any]) -> None:
    """Write ``updates`` (dotted keys) into ``path``, validated, atomically, comments kept."""
    raw = read_params_dict(path)
    expected = raw
    for key, value in updates.items():
        expected = set_path(expected, key, value)
    validate_params(expected, source=f"{path} with {updates}")
    new_text = set_values_in_text(path.read_text(), updates)
    if yaml.safe_load(new_text) != expected:
        raise ParamsError(f"could not update {path} in place for {sorted(updates)}; edit it by hand")
    write_text_atomic(path, new_text)


def apply_overlay(path: Path, overlay: Path) -> dict[str, Any]:
    """Write a configuration overlay's values into ``path`` (validated, atomically, comments kept):
    the one way a ``configs/*.yaml`` becomes the configuration DVC and every flow read."""
    updates = overlay_updates(overlay, read_params_dict(path))
    if updates:
        update_params_file(path, updates)
    return updates
