"""Preparation (the ``prepare`` stage of dvc.yaml): raw class-per-folder tree -> split arrays.

Output folder: ``train.npz``, ``val.npz``, ``test.npz`` (``images`` float32 (N, C, H, W) in
[0, 1], ``labels`` int64 indices into ``classes``) and ``manifest.json``. Written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import atomic_dir
from components.data.arrays import load_npz, save_npz, sha256_file
from components.data.images import BadImageError, load_image_noted
from components.data.sources import FolderListing, scan_image_folder
from components.data.splits import SPLITS, split_classes
from components.errors import DataError
from components.params import DataParams

log = logging.getLogger(__name__)


@dataclass
class DecodedClasses:
    arrays: dict[str, np.ndarray]
    skipped: list[str] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)  # conversion note -> images
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # class -> sha256 of bytes -> file
    rows: dict[str, dict[str, int]] = field(default_factory=dict)   # class -> sha256 of bytes -> its row
    ignored: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # copies left out (data.on_duplicate: skip)


@dataclass(frozen=True)
class Split:
    """One prepared split held in memory."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def by_class(self) -> list[np.ndarray]:
        return [self.images[self.labels == i] for i in range(len(self.classes))]


def decode_classes(listing: FolderListing, params: DataParams, name: Callable[[str], str] = str) -> DecodedClasses:
    """Decode every image, apply ``on_bad_image`` and drop classes under ``min_images_per_class``;
    ``name`` rewrites a message's paths for the user (a snapshot's copies -> the source files)."""
    out = DecodedClasses(arrays={}, ignored=len(listing.ignored))
    for cls, files in listing.classes.items():
        images = []
        for path in files:
            try:
                image, note = load_image_noted(path, params.channels, params.image_size, params.max_image_pixels)
                digest = sha256_file(path)
                if digest not in out.files.get(cls, {}):
                    out.rows.setdefault(cls, {})[digest] = len(images)
                images.append(image)
                out.files.setdefault(cls, {}).setdefault(digest, str(path))
                if note is not None:
                    out.converted[note] = out.converted.get(note, 0) + 1
            except BadImageError as err:
                if params.on_bad_image == "fail":
                    raise DataError(f"{name(str(err))} (data.on_bad_image is 'fail')") from None
                log.warning("skipping bad image %s", name(str(err)))
                out.skipped.append(str(path))
        if len(images) < params.min_images_per_class:
            log.warning(
                "dropping class %r: %d image(s) < data.min_images_per_class=%d",
                cls, len(images), params.min_images_per_class,
            )
            out.dropped[cls] = len(images)
            continue
        out.arrays[cls] = np.stack(images)
    if not out.arrays:
        raise DataError(
            f"no class has at least data.min_images_per_class={params.min_images_per_class} readable images "
            f"(dropped: {out.dropped})"
        )
    return out


def check_disjoint(decoded: DecodedClasses, assignment: dict[str, list[str]], policy: str = "fail") -> list[dict[str, str]]:
    """No image's bytes in two splits: a copy of a meta-train image among the test classes would
    inflate every evaluation. ``policy`` fail: a :class:`DataError` names both files; skip: the
    first copy (train, then val, then test) stays, the later ones leave their classes and are
    returned (for the manifest)."""
    owner: dict[str, tuple[str, str]] = {}
    removed: list[dict[str, str]] = []
    for split, classes in assignment.items():
        for cls in classes:
            drop = []
            for digest, path in decoded.files.get(cls, {}).items():
                if digest in owner and owner[digest][0] != split:
                    other_split, other = owner[digest]
                    if policy == "fail":
                        raise DataError(f"{path} (class {cls!r}, {split}) has the same bytes as {other} ({other_split}): "
                                        "the same image would be in two splits; remove one copy, or set "
                                        "data.on_duplicate: skip")
                    log.warning("skipping %s: the same bytes as %s (data.on_duplicate: skip)", path, other)
                    removed.append({"file": path, "class": cls, "split": split, "same_as": other})
                    drop.append(decoded.rows[cls][digest])
                    continue
                owner.setdefault(digest, (split, path))
            if drop:
                decoded.arrays[cls] = np.delete(decoded.arrays[cls], drop, axis=0)
    return removed


def build_splits(decoded: DecodedClasses, params: DataParams) -> dict[str, Split]:
    assignment = split_classes(list(decoded.arrays), params.split)
    decoded.duplicates = check_disjoint(decoded, assignment, params.on_duplicate)
    if len(assignment["train"]) < 2:
        log.warning("the meta-train split holds %d class(es) (%s): every task would come from the same class, "
                    "so nothing teaches the generator to adapt; add classes or raise data.split.fractions[0]",
                    len(assignment["train"]), ", ".join(assignment["train"]) or "none")
    splits = {}
    for name in SPLITS:
        classes = assignment[name]
        images = np.concatenate([decoded.arrays[c] for c in classes]).astype(np.float32)
        labels = np.concatenate([np.full(len(decoded.arrays[c]), i, dtype=np.int64) for i, c in enumerate(classes)])
        splits[name] = Split(images=images, labels=labels, classes=classes)
    return splits


SOURCE_NOTE = ".metagen-source.json"  # written into data/ by the ingest: what the copy left out


def prepare(raw_dir: Path, out_dir: Path, params: DataParams) -> dict[str, Any]:
    """Read the raw tree, build the splits and write them atomically; return the manifest."""
    listing = scan_image_folder(raw_dir)
    decoded = decode_classes(listing, params)
    note = Path(raw_dir) / SOURCE_NOTE
    left_out = int(json.loads(note.read_text()).get("ignored_non_image_files", 0)) if note.is_file() else 0
    if decoded.converted:
        log.info("converted images: %s", decoded.converted)
    splits = build_splits(decoded, params)
    with atomic_dir(out_dir) as staging:
        manifest: dict[str, Any] = {
            "source": params.source,
            "source_path": params.path,
            "params": params.model_dump(mode="json"),
            "splits": {},
            "dropped_classes": decoded.dropped,
            "skipped_images": {"count": len(decoded.skipped), "files": decoded.skipped},
            "skipped_duplicates": decoded.duplicates,
            "converted_images": decoded.converted,
            "ignored_non_image_files": decoded.ignored + left_out,
        }
        for name, split in splits.items():
            path = staging / f"{name}.npz"
            save_npz(path, {"images": split.images, "labels": split.labels, "classes": np.array(split.classes)})
            manifest["splits"][name] = {
                "file": path.name,
                "sha256": sha256_file(path),
                "classes": {c: int((split.labels == i).sum()) for i, c in enumerate(split.classes)},
                "num_images": int(len(split.labels)),
            }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("prepared %s: %s", out_dir, {k: len(v.classes) for k, v in splits.items()})
    return manifest


def load_split(prepared_dir: Path, name: str) -> Split:
    path = Path(prepared_dir) / f"{name}.npz"
    if not path.is_file():
        raise DataError(f"prepared split not found: {path} (run `metagen ingest` first)")
    arrays = load_npz(path)
    return Split(images=arrays["images"], labels=arrays["labels"], classes=[str(c) for c in arrays["classes"]])


def read_manifest(prepared_dir: Path) -> dict[str, Any]:
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"manifest not found: {path} (run `metagen ingest` first)")
    return json.loads(path.read_text())
