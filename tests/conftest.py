"""Shared fixtures: the project's params.yaml as the base config, small image trees made with Pillow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from components.params import Params, apply_overrides, read_params_dict, validate_params

pytest_plugins = ["tests.fixtures"]

PROJECT = Path(__file__).resolve().parents[1]
SHARED_CELEBA = PROJECT.parent / "shared" / "data" / "celeba-wild-sample"

for _k, _v in {
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_k, _v)


def base_raw() -> dict[str, Any]:
    return read_params_dict(PROJECT / "params.yaml")


def make_params(*overrides: str) -> Params:
    return validate_params(apply_overrides(base_raw(), list(overrides)), source="test params")


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 16), mode: str = "L") -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def write_tree(root: Path, classes: dict[str, int], ext: str = ".png", mode: str = "L") -> Path:
    for ci, (name, count) in enumerate(sorted(classes.items())):
        for i in range(count):
            write_image(root / name / f"img{i:03d}{ext}", seed=ci * 1000 + i, mode=mode)
    return root


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "tree", {f"class{i}": 8 for i in range(6)})


def small_data_overrides(path: Path, source: str = "image_folder") -> list[str]:
    return [
        f"data.source={source}",
        f"data.path={path}",
        "data.min_images_per_class=6",
        "meta.k_shot=2",
        "meta.k_query=3",
        "data.split.fractions=[0.5, 0.25, 0.25]",
    ]


@pytest.fixture(scope="session")
def digits_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default source (scikit-learn digits) prepared with the project's params.yaml."""
    from components.data.prepare import prepare
    from components.data.sources import export_digits

    root = tmp_path_factory.mktemp("digits")
    export_digits(root / "raw")
    prepare(root / "raw", root / "prepared", make_params().data)
    return root / "prepared"
