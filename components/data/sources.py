"""Data sources, all offline: the embedded Omniglot alphabets, scikit-learn's digits, an image
folder, CelebA, an archive.

Each source becomes a *raw snapshot*: a class-per-folder tree of image files (class id = the
folder's path relative to the root, e.g. ``Greek/character07``). That tree is what ``data/``
holds, what ``data.dvc`` versions, and what preparation reads.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from components.data.archive import extract_archive
from components.data.images import is_image_file
from components.errors import DataError
from components.params import DataParams

# Three alphabets of Omniglot's background set (Japanese katakana, Sanskrit, Tagalog: 106 characters,
# 20 105x105 1-bit PNGs each; Lake et al., MIT licence in the LICENSE beside it), packed
# deterministically (sorted members, mtime 0, gzip level 9): the default data.
OMNIGLOT_ARCHIVE = Path(__file__).parent / "embedded" / "omniglot-dev.tar.gz"

log = logging.getLogger(__name__)


@dataclass
class FolderListing:
    """The classes of a class-per-folder tree and the files that were ignored."""

    classes: dict[str, list[Path]]
    ignored: list[Path] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # a copied file -> the user's file it came from

    def name(self, text: str) -> str:
        """``text`` with the snapshot's own paths replaced by the user's files they were copied from."""
        for copied, origin in self.origins.items():
            if copied in text:
                text = text.replace(copied, origin)
        return text


def scan_image_folder(root: Path) -> FolderListing:
    """List a class-per-folder tree; nested trees allowed, hidden entries skipped.

    A folder that directly holds image files is a class. A leaf folder without images is an empty
    class: a :class:`DataError` naming it. Symbolic links to folders are not followed (a linked
    class would be a second class with the same images, across splits); a linked file whose
    target is already listed is skipped. Both are logged and counted as ignored.
    """
    if not root.exists():
        raise DataError(f"source path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"source path is not a folder: {root}")
    classes: dict[str, list[Path]] = {}
    ignored: list[Path] = []
    empty: list[str] = []
    seen: set[Path] = set()
    for folder in _real_folders(root, ignored):
        rel = folder.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        files = []
        for p in sorted(entries, key=lambda e: (e.is_symlink(), e.name)):  # the real file before its links
            if not p.is_file():
                continue
            try:
                real = p.resolve()
            except (OSError, RuntimeError):  # a link loop
                log.warning("skipping %s: a link that does not resolve", p)
                ignored.append(p)
                continue
            if real in seen:
                log.warning("skipping %s: a link to %s, already listed", p, real)
                ignored.append(p)
                continue
            seen.add(real)
            files.append(p)
        images = [p for p in files if is_image_file(p)]
        ignored.extend(p for p in files if not is_image_file(p))
        has_subdirs = any(p.is_dir() and not p.is_symlink() for p in entries)
        if images:
            if folder == root:
                raise DataError(
                    f"{root}: image files lie directly in the root ({images[0].name}, ...); "
                    "expected one sub-folder per class"
                )
            classes[rel.as_posix()] = images
        elif not has_subdirs and folder != root:
            empty.append(rel.as_posix())
    if empty:
        raise DataError(f"{root}: empty class folder(s) with no PNG/JPEG/BMP images: {', '.join(empty)}")
    if not classes:
        raise DataError(f"{root}: no class folders with images found")
    if ignored:
        log.info("ignored %d non-image file(s) under %s", len(ignored), root)
    return FolderListing(classes=classes, ignored=ignored)


def _real_folders(root: Path, ignored: list[Path]) -> list[Path]:
    """``root`` and every folder under it, sorted, without following symbolic links to folders
    (each link is logged and added to ``ignored``)."""
    out = []
    stack = [root]
    while stack:
        folder = stack.pop()
        out.append(folder)
        for p in folder.iterdir():
            if p.is_symlink() and p.is_dir():
                log.warning("not following %s: a symbolic link to a folder (%s)", p, p.resolve())
                ignored.append(p)
            elif p.is_dir():
                stack.append(p)
    return sorted(out)


def scan_celeba(root: Path) -> FolderListing:
    """CelebA's layout: ``identity_CelebA.txt`` and ``img_align_celeba/`` or ``img_celeba/``."""
    if not root.is_dir():
        raise DataError(f"CelebA root does not exist or is not a folder: {root}")
    ident = root / "identity_CelebA.txt"
    if not ident.is_file():
        raise DataError(f"{root}: identity_CelebA.txt not found (expected '<file> <identity>' lines)")
    img_dir = next((root / d for d in ("img_align_celeba", "img_celeba") if (root / d).is_dir()), None)
    if img_dir is None:
        raise DataError(f"{root}: neither img_align_celeba/ nor img_celeba/ found")
    classes: dict[str, list[Path]] = {}
    for lineno, line in enumerate(ident.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{ident}:{lineno}: expected '<file> <identity>', got {line!r}")
        file, identity = parts
        path = img_dir / file
        if not path.is_file():
            raise DataError(f"{ident}:{lineno}: names {file!r}, which is missing from {img_dir}")
        classes.setdefault(identity, []).append(path)
    if not classes:
        raise DataError(f"{ident}: lists no images")
    return FolderListing(classes=dict(sorted(classes.items(), key=lambda kv: int(kv[0]))))


def export_digits(dest: Path) -> FolderListing:
    """scikit-learn's bundled 8x8 digits as a class-per-folder PNG tree (deterministic bytes)."""
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    classes: dict[str, list[Path]] = {}
    for index, (img, label) in enumerate(zip(images, digits.target, strict=True)):
        folder = dest / f"digit_{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:04d}.png"
        Image.fromarray(img, mode="L").save(path, format="PNG", optimize=False)
        classes.setdefault(folder.name, []).append(path)
    return FolderListing(classes=dict(sorted(classes.items())))


def _copy_listing(listing: FolderListing, dest: Path, origin: Callable[[Path], str] = str) -> FolderListing:
    """Copy the listed images into ``dest/<class>/``; remember where each copy came from (``origin``
    names a source file as the user knows it), so that errors about a copy name the user's file."""
    out: dict[str, list[Path]] = {}
    origins: dict[str, str] = {}
    for cls, files in listing.classes.items():
        folder = dest / cls
        folder.mkdir(parents=True, exist_ok=True)
        for src in files:
            target = folder / src.name
            shutil.copyfile(src, target)
            out.setdefault(cls, []).append(target)
            origins[str(target)] = origin(src)
    return FolderListing(classes=out, ignored=listing.ignored, origins=origins)


def _extract(archive: Path, dest: Path, params: DataParams, shown: str) -> FolderListing:
    with tempfile.TemporaryDirectory(prefix="metagen-archive-") as tmp:
        root = extract_archive(archive, Path(tmp), params.max_archive_members, params.max_archive_bytes)
        return _copy_listing(scan_image_folder(root), dest, lambda p: f"{shown}:{p.relative_to(tmp).as_posix()}")


def materialize_source(params: DataParams, dest: Path) -> FolderListing:
    """Write the configured source's raw snapshot into the empty folder ``dest``."""
    if params.source == "digits":
        return export_digits(dest)
    if params.source == "omniglot":
        return _extract(OMNIGLOT_ARCHIVE, dest, params, shown=OMNIGLOT_ARCHIVE.name)
    if not params.path:
        raise DataError(f"data.path: required for data.source {params.source!r}")
    src = Path(params.path).expanduser()
    if params.source == "image_folder":
        return _copy_listing(scan_image_folder(src), dest)
    if params.source == "celeba":
        return _copy_listing(scan_celeba(src), dest)
    if params.source == "archive":
        return _extract(src, dest, params, shown=str(src))
    raise DataError(f"data.source: unknown source {params.source!r}")

