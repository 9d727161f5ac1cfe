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


def test_the_same_image_in_two_splits_is_refused_or_skipped(tmp_path: Path) -> None:
    """Real CelebA files a few byte-identical images under two identities: ``fail`` refuses the
    data naming both files; ``skip`` (the default) keeps the first copy and lists the others."""
    root = write_tree(tmp_path / "tree", {f"class{i}": 6 for i in range(4)})
    copied = root / "class3" / "img005.png"
    copied.write_bytes((root / "class0" / "img000.png").read_bytes())
    strict = make_params(*small_data_overrides(root), "data.on_duplicate=fail")
    with pytest.raises(DataError, match=r"same bytes as .*img00\d\.png.*two splits.*data.on_duplicate: skip"):
        prepare(root, tmp_path / "prepared", strict.data)
    assert not (tmp_path / "prepared").exists()
    manifest = prepare(root, tmp_path / "prepared", make_params(*small_data_overrides(root)).data)
    (dup,) = manifest["skipped_duplicates"]
    assert {Path(dup["file"]).name, Path(dup["same_as"]).name} == {"img005.png", "img000.png"}
    counts = {c: n for s in manifest["splits"].values() for c, n in s["classes"].items()}
    assert counts[dup["class"]] == 5 and sum(counts.values()) == 23  # one copy left out, the other kept


def _archive_tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "tree", {f"class{i}": 3 for i in range(2)})


def test_a_truncated_tar_gz_is_refused(tmp_path: Path) -> None:
    import tarfile

    from components.data.archive import extract_archive

    archive = tmp_path / "chars.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(_archive_tree(tmp_path), arcname="imgs")
    archive.write_bytes(archive.read_bytes()[:-30])  # the gzip trailer (CRC and size) is gone
    with pytest.raises(DataError, match=r"chars.tar.gz: corrupt or truncated gzip"):
        extract_archive(archive, tmp_path / "out")
    assert not any((tmp_path / "out").glob("**/*.png"))


def test_a_zip_member_with_a_bad_crc_is_refused(tmp_path: Path) -> None:
    import zipfile

    from components.data.archive import extract_archive

    archive = tmp_path / "chars.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(_archive_tree(tmp_path).rglob("*.png")):
            zf.write(p, f"imgs/{p.parent.name}/{p.name}")
    blob = bytearray(archive.read_bytes())
    start = blob.index(b"IDAT") + 8  # a byte of the first image's pixel data (stored, not deflated)
    blob[start] ^= 0xFF
    archive.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"chars.zip: member 'imgs/class0/img000.png' fails its CRC check"):
        extract_archive(archive, tmp_path / "out")


def test_archive_member_and_size_caps(tmp_path: Path) -> None:
    import tarfile

    from components.data.archive import extract_archive

    archive = tmp_path / "chars.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(_archive_tree(tmp_path), arcname="imgs")
    with pytest.raises(DataError, match=r"members exceed data.max_archive_members \(3\)"):
        extract_archive(archive, tmp_path / "a", max_members=3)
    with pytest.raises(DataError, match=r"bytes once extracted exceed data.max_archive_bytes \(100\)"):
        extract_archive(archive, tmp_path / "b", max_bytes=100)
    assert extract_archive(archive, tmp_path / "c").name == "imgs"


def test_a_one_class_meta_train_split_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_tree(tmp_path / "tree", {f"class{i}": 6 for i in range(3)})
    params = make_params(*small_data_overrides(root), "data.split.fractions=[0.34, 0.33, 0.33]")
    with caplog.at_level("WARNING"):
        prepare(root, tmp_path / "prepared", params.data)
    assert "meta-train split holds 1 class(es)" in caplog.text


def test_errors_name_the_users_files_not_temporary_copies(tmp_path: Path) -> None:
    """The snapshot is checked in a temporary copy: a bad image is named as the user's file (in a
    folder, or `archive:member`), never as the copy, and nothing is left behind."""
    import tarfile

    from components.data.ingest import ingest

    root = write_tree(tmp_path / "tree", {f"class{i}": 6 for i in range(4)})
    (root / "class2" / "img003.png").write_bytes(b"not a png")
    project = tmp_path / "project"
    project.mkdir()
    params = make_params(*small_data_overrides(root), "data.on_bad_image=fail")
    with pytest.raises(DataError) as err:
        ingest(project, params)
    assert str(root / "class2" / "img003.png") in str(err.value) and ".data.new-" not in str(err.value)

    archive = tmp_path / "chars.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(root, arcname="imgs")
    params = make_params(*small_data_overrides(archive, "archive"), "data.on_bad_image=fail")
    with pytest.raises(DataError) as err:
        ingest(project, params)
    assert f"{archive}:imgs/class2/img003.png" in str(err.value) and "metagen-archive-" not in str(err.value)
    assert sorted(p.name for p in project.iterdir()) == []


def test_the_manifest_counts_what_the_source_copy_left_out(tmp_path: Path) -> None:
    """Non-image files of the source are not copied into data/; the manifest still counts them
    (it said 0 while the log said 99,890)."""
    from components.data.ingest import _snapshot_and_check

    root = write_tree(tmp_path / "tree", {f"class{i}": 6 for i in range(4)})
    for i in range(3):
        (root / "class1" / f"notes{i}.txt").write_text("not an image")
    params = make_params(*small_data_overrides(root))
    staging = tmp_path / "snapshot"
    staging.mkdir()
    _snapshot_and_check(params.data, staging)
    assert not list(staging.rglob("*.txt"))
    manifest = prepare(staging, tmp_path / "prepared", params.data)
    assert manifest["ignored_non_image_files"] == 3
