"""Flow `ingest`: DVC-versioned data in (pull from the remote, or rebuild + repro + push)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from components.data.dvc_ops import dvc_push
from components.data.ingest import ensure_data, ingest as run_ingest, source_fingerprint
from components.data.lineage import data_version, raw_md5
from components.params import Params, flatten
from pipelines.common import resolve, run_name


@task(name="ingest-data", cache_policy=(INPUTS - "params") + TASK_SOURCE, cache_expiration=timedelta(days=30))
def ingest_data(root: str, params: Params, data_section: dict[str, Any], fingerprint: str,
                raw: str | None, prepared_md5: str | None, prepared_present: bool) -> dict[str, Any]:
    """Cached on the source fingerprint, the data params and the committed DVC md5s."""
    result = ensure_data(Path(root), params)
    return {**result.version.__dict__, "data_changed": result.data_changed}


@task(name="refresh-data")
def refresh_data(root: str, params: Params, updates: dict[str, Any]) -> dict[str, Any]:
    """Re-read the source into data/, `dvc add`, `dvc repro prepare`, `dvc push`; data.* overrides
    are written to params.yaml so that DVC's stage sees them."""
    result = run_ingest(Path(root), params, param_updates=updates or None)
    dvc_push(Path(root))
    return {**result.version.__dict__, "data_changed": result.data_changed}


@flow(name="ingest", log_prints=True, flow_run_name=run_name("ingest"))
def ingest(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
           refresh: bool = False, params: Params | None = None) -> dict[str, Any]:
    """``refresh``: re-read the source now; else pull from the DVC remote or rebuild (cached).
    ``overrides`` name the data.* keys that a refresh writes to params.yaml."""
    base, params = resolve(root, params_path, overrides, params)
    if refresh:
        flat = flatten(params)
        keys = [o.split("=", 1)[0].strip() for o in overrides or []]
        updates = {k: flat[k] for k in keys if k.startswith("data.") and k in flat}
        return refresh_data(str(base), params, updates)
    current = data_version(base, params.data.prepared_dir)
    present = (base / params.data.prepared_dir / "manifest.json").is_file()
    # a cached result says "the data was there": with no prepared data (a fresh clone, even at the
    # path of a deleted one) the task runs whatever the cache holds
    task_ = ingest_data if present else ingest_data.with_options(refresh_cache=True)
    result = task_(
        str(base), params, params.data.model_dump(mode="json"), source_fingerprint(params.data),
        raw_md5(base), current.prepared_md5, present,
    )
    # the cache is keyed on the data, not on git: the commit and its state are read now
    now = data_version(base, params.data.prepared_dir)
    return {**result, "git_commit": now.git_commit, "git_dirty": now.git_dirty}
