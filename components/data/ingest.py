"""Ingestion: refresh ``data/`` from the configured source, ``dvc add`` it, ``dvc repro prepare``.

Nothing is touched until the new snapshot has been decoded and split in full; if a DVC step fails
afterwards, ``data/``, ``data.dvc`` and ``params.yaml`` are put back as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sklearn

from components.data.dvc_ops import dvc_add, dvc_pull, dvc_push, dvc_repro
from components.data.lineage import DataVersion, data_version, raw_md5
from components.data.prepare import SOURCE_NOTE, build_splits, decode_classes
from components.data.sources import OMNIGLOT_ARCHIVE, materialize_source, scan_image_folder
from components.errors import DataError
from components.params import DataParams, Params
from components.params_file import update_params_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    version: DataVersion
    previous_raw_md5: str | None
    num_classes: int

    @property
    def data_changed(self) -> bool:
        return self.previous_raw_md5 is not None and self.previous_raw_md5 != self.version.raw_md5


def _snapshot_and_check(data: DataParams, staging: Path) -> int:
    """Copy the source into ``staging`` and check that it prepares; errors name the user's files,
    never the temporary copies."""
    copied = materialize_source(data, staging)
    # what the copy left out, for prepare's manifest (hidden: not an image, not a class)
    (staging / SOURCE_NOTE).write_text(json.dumps({"ignored_non_image_files": len(copied.ignored)}) + "\n")
    try:
        decoded = decode_classes(scan_image_folder(staging), data, copied.name)
        build_splits(decoded, data)
    except DataError as err:
        raise type(err)(copied.name(str(err))) from None
    return len(decoded.arrays)


def ingest(root: Path, params: Params, param_updates: dict[str, Any] | None = None) -> IngestResult:
    """Refresh the raw snapshot and the prepared splits; return the new data version.

    ``param_updates`` (dotted keys, already applied to ``params``) are written to params.yaml so
    that DVC's stage sees the same values.
    """
    root = Path(root).resolve()
    raw = root / params.data.raw_dir
    backups: dict[Path, str | None] = {
        p: (p.read_text() if p.is_file() else None) for p in (root / "data.dvc", root / "params.yaml")
    }
    previous = raw_md5(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{raw.name}.new-", dir=root))
    try:
        num_classes = _snapshot_and_check(params.data, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = raw.with_name(f".{raw.name}.old-{os.getpid()}")
    if raw.exists():
        os.replace(raw, old)
    os.replace(staging, raw)
    try:
        if param_updates:
            update_params_file(root / "params.yaml", param_updates)
        dvc_add(root, params.data.raw_dir)
        dvc_repro(root, "prepare")
    except BaseException:
        log.error("ingest failed; restoring %s, data.dvc and params.yaml", raw)
        shutil.rmtree(raw, ignore_errors=True)
        if old.exists():
            os.replace(old, raw)
        for path, text in backups.items():
            if text is not None:
                path.write_text(text)
        raise
    shutil.rmtree(old, ignore_errors=True)
    version = data_version(root, params.data.prepared_dir)
    result = IngestResult(version=version, previous_raw_md5=previous, num_classes=num_classes)
    if result.data_changed:
        log.warning("data changed: data.dvc md5 %s -> %s", previous, version.raw_md5)
    return result


def source_fingerprint(data: DataParams) -> str:
    """A cheap hash of the configured source (names, sizes, mtimes; digits: the sklearn version)."""
    h = hashlib.sha256(data.source.encode())
    if data.source == "digits":
        h.update(sklearn.__version__.encode())
        return h.hexdigest()[:16]
    src = OMNIGLOT_ARCHIVE if data.source == "omniglot" else Path(data.path or "").expanduser()
    paths = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(src) if p != src else p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def ensure_data(root: Path, params: Params) -> IngestResult:
    """What the pipeline runs: ``dvc pull`` when a remote holds the committed data; otherwise
    rebuild ``data/`` from the source (checked against the committed ``data.dvc``), ``dvc repro
    prepare`` and ``dvc push``."""
    root = Path(root).resolve()
    committed = raw_md5(root)
    if committed is not None:
        try:
            dvc_pull(root, targets=["data.dvc", "dvc.yaml:prepare"])
            dvc_repro(root, "prepare")
            version = data_version(root, params.data.prepared_dir)
            if version.raw_md5 == committed:
                log.info("data pulled from the DVC remote: %s", version.short)
                return IngestResult(version=version, previous_raw_md5=committed, num_classes=-1)
        except DataError:
            raise
        except Exception as err:  # dvc raises many kinds when the remote lacks the data
            log.warning("dvc pull did not restore the data (%s): rebuilding from the source",
                        (str(err).splitlines() or [type(err).__name__])[0])
    result = ingest(root, params)
    pushed = dvc_push(root)
    log.info("dvc push: %d file(s) sent to the remote", pushed)
    return result
