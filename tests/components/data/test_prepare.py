import json
from pathlib import Path

import numpy as np
import pytest

from components.data.prepare import load_split, prepare
from components.data.splits import split_classes
from components.errors import DataError
from tests.conftest import make_params, small_data_overrides


def test_same_seed_same_split_and_bytes(tmp_path: Path, tiny_tree: Path) -> None:
    params = make_params(*small_data_overrides(tiny_tree))
    m1 = prepare(tiny_tree, tmp_path / "p1", params.data)
    m2 = prepare(tiny_tree, tmp_path / "p2", params.data)
    assert m1["splits"] == m2["splits"]
    assert (tmp_path / "p1" / "train.npz").read_bytes() == (tmp_path / "p2" / "train.npz").read_bytes()
    other = make_params(*small_data_overrides(tiny_tree), "data.split.seed=5")
    m3 = prepare(tiny_tree, tmp_path / "p3", other.data)
    assert m3["splits"] != m1["splits"]


def test_splits_disjoint_and_shapes(tmp_path: Path, tiny_tree: Path) -> None:
    params = make_params(*small_data_overrides(tiny_tree), "data.image_size=32")
    prepare(tiny_tree, tmp_path / "p", params.data)
    seen = set()
    for name in ("train", "val", "test"):
        split = load_split(tmp_path / "p", name)
        assert split.images.shape[1:] == (1, 32, 32)
        assert split.images.dtype == np.float32
        assert seen.isdisjoint(split.classes)
        seen |= set(split.classes)
        assert len(split.labels) == 8 * len(split.classes)
    assert len(seen) == 6
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert set(manifest["splits"]["train"]) >= {"sha256", "classes", "num_images"}


def test_explicit_class_lists(tiny_tree: Path) -> None:
    params = make_params(
        *small_data_overrides(tiny_tree),
        "data.split.classes={train: [class0, class1, class2], val: [class3], test: [class4, class5]}",
    )
    out = split_classes([f"class{i}" for i in range(6)], params.data.split)
    assert out["test"] == ["class4", "class5"]
    bad = make_params(*small_data_overrides(tiny_tree), "data.split.classes={train: [nope], val: [class3], test: [class4]}")
    with pytest.raises(DataError, match=r"data.split.classes.train: \['nope'\]"):
        split_classes([f"class{i}" for i in range(6)], bad.data.split)


def test_failed_prepare_keeps_previous_output(tmp_path: Path, tiny_tree: Path) -> None:
    params = make_params(*small_data_overrides(tiny_tree))
    out = tmp_path / "p"
    prepare(tiny_tree, out, params.data)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tiny_tree / "class0" / "img000.png").write_bytes(b"garbage")
    failing = make_params(*small_data_overrides(tiny_tree), "data.on_bad_image=fail")
    with pytest.raises(DataError, match="img000.png"):
        prepare(tiny_tree, out, failing.data)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
