import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.data.archive import extract_archive
from components.data.images import load_image
from components.data.prepare import build_splits, decode_classes, prepare
from components.data.sources import OMNIGLOT_ARCHIVE, export_digits, materialize_source, scan_celeba, scan_image_folder
from components.errors import DataError
from tests.conftest import SHARED_CELEBA, make_params, small_data_overrides, write_image, write_tree


def test_image_folder_flat_any_mode_and_size(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "t", {"a": 3, "b": 2}, ext=".jpg", mode="RGB")
    write_image(root / "b" / "big.bmp", seed=9, size=(50, 30))
    listing = scan_image_folder(root)
    assert sorted(listing.classes) == ["a", "b"]
    assert len(listing.classes["b"]) == 3
    arr = load_image(listing.classes["b"][0], channels=1, size=28, max_pixels=10**6)
    assert arr.shape == (1, 28, 28) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    assert load_image(listing.classes["a"][0], channels=3, size=32, max_pixels=10**6).shape == (3, 32, 32)


def test_image_folder_nested_class_ids_and_ignored_files(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "t", {"Greek/character07": 2, "Greek/character08": 2, "Latin/a": 2})
    (root / "Greek" / "character07" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("x")
    listing = scan_image_folder(root)
    assert sorted(listing.classes) == ["Greek/character07", "Greek/character08", "Latin/a"]
    assert len(listing.ignored) == 2


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "t", {"a": 2})
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty class folder.*empty"):
        scan_image_folder(root)


def test_missing_source_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*nowhere"):
        scan_image_folder(tmp_path / "nowhere")


def _with_corrupt(tmp_path: Path) -> Path:
    root = write_tree(tmp_path / "t", {f"c{i}": 7 for i in range(4)})
    (root / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return root


def test_corrupt_image_fail_names_file(tmp_path: Path) -> None:
    root = _with_corrupt(tmp_path)
    params = make_params(*small_data_overrides(root), "data.on_bad_image=fail")
    with pytest.raises(DataError, match=r"broken\.png.*not a readable image"):
        decode_classes(scan_image_folder(root), params.data)


def test_corrupt_image_skip_counts_in_manifest(tmp_path: Path) -> None:
    root = _with_corrupt(tmp_path)
    (root / "c2" / "notes.txt").write_text("x")
    params = make_params(*small_data_overrides(root))
    manifest = prepare(root, tmp_path / "prepared", params.data)
    assert manifest["skipped_images"]["count"] == 1
    assert manifest["skipped_images"]["files"][0].endswith("broken.png")
    assert manifest["ignored_non_image_files"] == 1


def test_decompression_bomb_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (400, 400)).save(path)
    with pytest.raises(DataError, match=r"big\.png.*160000 pixels exceeds data.max_image_pixels"):
        load_image(path, 1, 28, max_pixels=100_000)


def test_small_classes_dropped_and_named(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "t", {"a": 7, "b": 7, "c": 7, "d": 7, "tiny": 3})
    params = make_params(*small_data_overrides(root))
    manifest = prepare(root, tmp_path / "p", params.data)
    assert manifest["dropped_classes"] == {"tiny": 3}
    all_classes = [c for s in manifest["splits"].values() for c in s["classes"]]
    assert sorted(all_classes) == ["a", "b", "c", "d"]


def test_too_few_classes_for_splits(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "t", {"a": 7, "b": 7})
    params = make_params(*small_data_overrides(root))
    with pytest.raises(DataError, match="too few to split"):
        build_splits(decode_classes(scan_image_folder(root), params.data), params.data)


def _fake_celeba(root: Path, identities: dict[int, int], missing: str | None = None) -> Path:
    lines = []
    n = 0
    for ident, count in identities.items():
        for _ in range(count):
            n += 1
            name = f"{n:06d}.jpg"
            write_image(root / "img_align_celeba" / name, seed=n, size=(18, 22), mode="RGB")
            lines.append(f"{name} {ident}")
    if missing:
        lines.append(f"{missing} 99")
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return root


def test_celeba_identities_are_classes(tmp_path: Path) -> None:
    root = _fake_celeba(tmp_path / "celeba", {12: 3, 7: 2})
    listing = scan_celeba(root)
    assert list(listing.classes) == ["7", "12"]
    assert len(listing.classes["12"]) == 3


def test_celeba_missing_image_named(tmp_path: Path) -> None:
    root = _fake_celeba(tmp_path / "celeba", {1: 2}, missing="999999.jpg")
    with pytest.raises(DataError, match=r"identity_CelebA.txt:3: names '999999.jpg', which is missing"):
        scan_celeba(root)


@pytest.mark.skipif(not SHARED_CELEBA.is_dir(), reason="../shared/data/celeba-wild-sample not present")
def test_celeba_real_sample(tmp_path: Path) -> None:
    params = make_params(
        "data.source=celeba", f"data.path={SHARED_CELEBA}", "data.channels=3", "data.image_size=32",
        "data.min_images_per_class=15",
    )
    listing = materialize_source(params.data, tmp_path / "raw")
    assert len(listing.classes) == 30
    manifest = prepare(tmp_path / "raw", tmp_path / "prepared", params.data)
    total = sum(s["num_images"] for s in manifest["splits"].values())
    assert total == 795
    assert manifest["params"]["channels"] == 3


def test_digits_export_deterministic(tmp_path: Path) -> None:
    a = export_digits(tmp_path / "a")
    export_digits(tmp_path / "b")
    assert sorted(a.classes) == [f"digit_{i}" for i in range(10)]
    first = a.classes["digit_3"][0]
    assert first.read_bytes() == (tmp_path / "b" / "digit_3" / first.name).read_bytes()


def test_embedded_omniglot_is_the_three_alphabets_with_their_licence(tmp_path: Path) -> None:
    listing = materialize_source(make_params("data.source=omniglot").data, tmp_path / "raw")
    alphabets = {name.split("/")[0]: 0 for name in listing.classes}
    for name in listing.classes:
        alphabets[name.split("/")[0]] += 1
    assert alphabets == {"Japanese_(katakana)": 47, "Sanskrit": 42, "Tagalog": 17}
    assert {len(files) for files in listing.classes.values()} == {20}
    first = listing.classes["Tagalog/character01"][0]
    assert listing.name(str(first)).startswith("omniglot-dev.tar.gz:")
    assert load_image(first, channels=1, size=28, max_pixels=10**6).shape == (1, 28, 28)
    licence = (OMNIGLOT_ARCHIVE.parent / "LICENSE").read_text()
    assert "MIT" in licence and "Brenden Lake" in licence


def _zip_tree(tree: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(tree.rglob("*.png")):
            zf.write(p, f"top/{p.relative_to(tree)}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def test_archive_zip_and_tar_load(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "t", {"a": 2, "b/c": 2})
    zroot = extract_archive(_zip_tree(tree, tmp_path / "x.zip"), tmp_path / "zx")
    assert sorted(scan_image_folder(zroot).classes) == ["a", "b/c"]
    tpath = tmp_path / "x.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        tf.add(tree, arcname="top")
    troot = extract_archive(tpath, tmp_path / "tx")
    assert sorted(scan_image_folder(troot).classes) == ["a", "b/c"]


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png", "top/../../evil.png"])
def test_zip_unsafe_member_refused_before_writing(tmp_path: Path, name: str) -> None:
    tree = write_tree(tmp_path / "t", {"a": 2})
    archive = _zip_tree(tree, tmp_path / "bad.zip", extra={name: b"x"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError, match=r"bad\.zip: member .*(absolute|'\.\.')"):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.png").exists()


def test_tar_symlink_outside_refused(tmp_path: Path) -> None:
    tpath = tmp_path / "bad.tar"
    with tarfile.open(tpath, "w") as tf:
        data = b"img"
        info = tarfile.TarInfo("top/a/ok.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("top/a/link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../../etc/passwd"
        tf.addfile(link)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError, match=r"link\.png.*outside the archive"):
        extract_archive(tpath, dest)
    assert list(dest.iterdir()) == []


def test_zip_symlink_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("top/a/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        extract_archive(archive, tmp_path / "d")
    assert not os.path.exists(tmp_path / "d" / "top")
