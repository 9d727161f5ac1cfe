"""Inputs a careful user broke (issue 15): links that duplicate classes, the same image in two
splits, 16-bit and transparent PNGs. Each is first reproduced, then handled."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.data.images import load_image
from components.data.prepare import prepare
from components.data.sources import scan_image_folder
from components.errors import DataError
from tests.conftest import make_params, small_data_overrides, write_tree


def _picture() -> np.ndarray:
    """An 8-bit grey picture with structure (a gradient with a dark square)."""
    arr = np.tile(np.linspace(20, 235, 32, dtype=np.float64), (32, 1))
    arr[8:20, 10:22] = 5
    return np.rint(arr).astype(np.uint8)


def test_16_bit_grey_keeps_its_range(tmp_path: Path) -> None:
    eight = _picture()
    Image.fromarray(eight, "L").save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    a = load_image(tmp_path / "eight.png", 1, 28, 10**6)
    b = load_image(tmp_path / "sixteen.png", 1, 28, 10**6)
    assert abs(float(a.mean()) - float(b.mean())) < 1e-3  # not 97% white
    assert np.abs(a - b).max() <= 1.0 / 255 + 1e-6


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    grey = np.zeros((32, 32), dtype=np.uint8)        # black under the transparent part
    alpha = np.zeros((32, 32), dtype=np.uint8)
    alpha[:, :16] = 255                               # left half opaque black, right half transparent
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
    pal = Image.fromarray(np.where(alpha > 0, 1, 0).astype(np.uint8), "P")
    pal.putpalette([128, 128, 128, 0, 0, 0] + [0] * 762)   # index 0 grey (transparent), 1 black
    pal.save(tmp_path / "p.png", transparency=0)
    for name in ("la.png", "p.png"):
        img = load_image(tmp_path / name, 1, 32, 10**6)[0]
        assert img[:, :14].max() < 0.05, name          # the opaque ink stays black
        assert img[:, 18:].min() > 0.95, name          # transparent: white, not the hidden grey/black
    rgb = load_image(tmp_path / "la.png", 3, 32, 10**6)
    assert rgb.shape == (3, 32, 32) and rgb[:, :, 18:].min() > 0.95


def test_a_linked_class_folder_is_not_a_second_class(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", {f"class{i}": 6 for i in range(3)})
    os.symlink(root / "class0", root / "class5")               # a link to another class
    os.symlink(".", root / "class1" / "loop")                  # a link loop
    os.symlink(root / "class2" / "img000.png", root / "class2" / "again.png")  # a linked file, listed twice
    listing = scan_image_folder(root)
    assert sorted(listing.classes) == ["class0", "class1", "class2"]
    assert len(listing.classes["class2"]) == 6
    assert {p.name for p in listing.ignored} == {"class5", "loop", "again.png"}


def test_the_same_image_in_two_splits_is_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", {f"class{i}": 6 for i in range(4)})
    params = make_params(*small_data_overrides(root))
    copied = root / "class3" / "img005.png"
    copied.write_bytes((root / "class0" / "img000.png").read_bytes())
    with pytest.raises(DataError, match=r"same bytes as .*img00\d\.png.*two splits"):
        prepare(root, tmp_path / "prepared", params.data)
    assert not (tmp_path / "prepared").exists()
