"""MLflow tracking: where runs go, and what a run records (params, metrics, pictures, lineage).

Default: a SQLite file in the project (``sqlite:///<root>/mlflow.db``) with artifacts under
``<root>/mlartifacts``; ``MLFLOW_TRACKING_URI`` or ``registry.tracking_uri`` points it anywhere.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from components.errors import MetagenError, ServerUnreachable
from components.evaluation.pictures import grid_image
from components.net import check_reachable, tracking_uri
from components.params import DataParams, Params, RegistryParams, flatten
from components.timing import phase

log = logging.getLogger(__name__)
ERROR_TAG = "metagen.error"
TABLE_FILE = "eval/rows.json"

# the MLflow UI opens an experiment on its runs for this kind (without it: on the GenAI overview)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def configure(registry: RegistryParams, root: Path) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; return its id."""
    import mlflow

    uri = tracking_uri(registry, root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = registry.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND[0]) is None:  # made before metagen set it, or by hand
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        artifact_location = (Path(root).resolve() / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=artifact_location, tags=dict([EXPERIMENT_KIND]))


def lineage_tags(params: Params, data_version: dict[str, Any]) -> dict[str, str]:
    tags = {f"data.{k}": str(v) for k, v in data_version.items()}
    tags["git.commit"] = str(data_version.get("git_commit"))
    tags["git.dirty"] = str(data_version.get("git_dirty"))
    tags["params.digest"] = params.digest()
    return tags


LINEAGE = ("data.raw_md5", "git.commit", "params.digest")  # what a model is made of: data, code, params


def unchanged_since(now: dict[str, str], before: dict[str, str]) -> bool:
    """Whether ``now``'s data, code and params (lineage tags) are ``before``'s: never when the code
    had uncommitted changes (the commit then does not say what ran)."""
    return (now.get("git.dirty") == "False" and before.get("git.dirty") == "False"
            and all(now.get(k) not in (None, "None") and now.get(k) == before.get(k) for k in LINEAGE))


def log_params(client: Any, run_id: str, params: Params) -> None:
    from mlflow.entities import Param

    flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[i : i + 100])


def log_history(client: Any, run_id: str, history: list[dict[str, float]]) -> None:
    """Per-meta-step metrics (train/val loss, grad norm) with their step."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, int(h["step"]))
        for h in history for key, value in h.items()
        if key != "step" and value is not None
    ]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500])


EVAL_METRICS = ("fid_mean", "fid_std", "kid_mean", "kid_std", "nll_mean", "nll_std", "precision", "recall",
                "density", "coverage", "copy_rate", "aug_acc_mean", "aug_acc_std")


def log_eval_rows(client: Any, run_id: str, rows: list[dict[str, Any]], model: str) -> None:
    """``eval.<mode>.<metric>``, the same keys for the meta-model and every baseline, so that one
    chart holds them all; support replay (its samples are the supports) reports as ``support``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for r in rows:
        if r["model"] != model:
            continue
        mode = "support" if r["sampling"] == "replay" else r["sampling"]
        for key in EVAL_METRICS:
            if r.get(key) is not None:
                metrics.append(Metric(f"eval.{mode}.{key}", float(r[key]), now, 0))
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def log_dataset(client: Any, run_id: str, data: DataParams, data_version: dict[str, Any]) -> None:
    """The data as the run's dataset input (MLflow's Dataset column and panel): named by its source,
    digest = the DVC md5 of ``data.dvc``, the prepared md5 and git commit in its source."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = str(data_version.get("raw_md5") or "")
    if not digest or digest == "None":
        return
    source = json.dumps({"dvc": "data.dvc", "raw_md5": digest, "prepared_md5": data_version.get("prepared_md5"),
                         "git_commit": data_version.get("git_commit"), "path": data.path or f"embedded {data.source}"})
    dataset = Dataset(name=f"{data.source}:{Path(data.path).name if data.path else data.source}", digest=digest[:36],
                      source_type="dvc", source=source)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])


def start_run(params: Params, root: Path, run_name: str, data_version: dict[str, Any] | None = None,
              parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None,
              run_params: dict[str, Any] | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) with lineage tags, the data as its
    dataset input, and every param (or only ``run_params``, for a run that concerns few)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    experiment_id = configure(params.registry, root)
    client = MlflowClient()
    tags = {"mlflow.runName": run_name, **(extra_tags or {})}
    if data_version is not None:
        tags.update(lineage_tags(params, data_version))
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    if run_params is None:
        log_params(client, run.info.run_id, params)
    else:
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in run_params.items()])
    if data_version is not None:
        log_dataset(client, run.info.run_id, params.data, data_version)
    return run.info.run_id


def finish_run(run_id: str, ok: bool = True) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_terminated(run_id, "FINISHED" if ok else "FAILED")


def fail_run(run_id: str, err: BaseException) -> None:
    """Mark the run FAILED with the error as a tag; never raise over the error being reported."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient()
        client.set_tag(run_id, ERROR_TAG, f"{type(err).__name__}: {err}"[:4000])
        client.set_terminated(run_id, "FAILED")
    except Exception as secondary:  # noqa: BLE001 - the tracking server may be what failed
        log.warning("could not mark MLflow run %s FAILED (%s); the error was: %s", run_id, secondary, err)


@contextmanager
def tracked_run(params: Params, root: Path, run_name: str, run_id: str | None = None,
                data_version: dict[str, Any] | None = None, parent_run_id: str | None = None,
                extra_tags: dict[str, str] | None = None) -> Iterator[str]:
    """A run's whole lifecycle: created here and FINISHED when the block ends, or FAILED (the error
    in the ``metagen.error`` tag) when it raises. Given ``run_id`` (a step of a larger run), the
    block writes to that run and its owner ends it."""
    try:  # a server that went away since the pre-flight fails the step now, not after its compute
        check_reachable(tracking_uri(params.registry, root))
    except ServerUnreachable as err:
        raise ServerUnreachable(f"{err} (before the {run_name} step)") from None
    if run_id is not None:
        yield run_id
        return
    with phase("mlflow start run", "overhead"):
        run_id = start_run(params, root, run_name, data_version, parent_run_id, extra_tags)
    try:
        yield run_id
    except BaseException as err:
        fail_run(run_id, err)
        raise
    with phase("mlflow end run", "overhead"):
        finish_run(run_id)


UNREACHABLE = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
               "Connection aborted", "Read timed out", "RemoteDisconnected", "NameResolutionError")


@contextmanager
def mlflow_step(step: str) -> Iterator[None]:
    """Tracking calls of one step: when the tracking server is gone (after MLflow's bounded
    retries, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), one line naming the server and the step."""
    try:
        yield
    except MetagenError:
        raise
    except Exception as err:
        text = str(err)
        if not any(m in text for m in UNREACHABLE):
            raise
        import mlflow

        raise ServerUnreachable(f"MLflow tracking server {mlflow.get_tracking_uri()} unreachable while {step} "
                           f"({type(err).__name__}); what the step computed is kept on disk (checkpoints/, "
                           "reports/eval.json): when the server is back, `metagen promote` registers and gates "
                           "that checkpoint and evaluation without recomputing them") from None


def log_training(run_id: str, history: list[dict[str, float]], checkpoint: Path, backend: str,
                 grids: dict[int, Any] | None = None, resumed_from: list[int] | None = None) -> None:
    """The per-step metrics, and the validation samples as one image series (``validation_samples``,
    one image per validation step: the MLflow UI's slider shows the generator improve)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    log_history(client, run_id, history)
    client.set_tag(run_id, "train.backend", backend)
    client.set_tag(run_id, "train.checkpoint", str(checkpoint))
    if resumed_from:
        client.set_tag(run_id, "train.worker_restarts", str(len(resumed_from)))
        client.set_tag(run_id, "train.resumed_from_steps", ",".join(map(str, resumed_from)))
    for step, grid in sorted((grids or {}).items()):
        title = f"meta-val classes at step {step}: K supports | samples after adapting"
        client.log_image(run_id, grid_image(grid, title), key="validation_samples", step=int(step))


def log_tune(params: Params, root: Path, parent_run_id: str, trials: list[dict[str, Any]], table: Path) -> None:
    """One nested run per Tune trial (its sampled values and last metric), the table as an artifact."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for t in trials:
        run_id = start_run(params, root, f"tune-trial-{t['trial_id']}", parent_run_id=parent_run_id,
                           extra_tags={"metagen.kind": "tune-trial"})
        for k, v in t.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and k != "trial_id":
                client.log_metric(run_id, k.replace("@", "_"), float(v))
            elif v is not None:
                client.set_tag(run_id, f"trial.{k}", str(v))
        finish_run(run_id)
    client.log_artifact(parent_run_id, str(table), "tune")


def _baseline_params(params: Params, rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The params that concern one baseline's run: the protocol, the VAE, its own adaptation."""
    row = next(r for r in rows if r["model"] == name)
    out: dict[str, Any] = {"meta.k_shot": params.meta.k_shot, "eval.repeats": params.eval.repeats,
                           "eval.samples_per_class": params.eval.samples_per_class, "eval.seed": params.eval.seed,
                           "model.arch": params.model.arch, "model.latent_dim": params.model.latent_dim, "model.width": params.model.width,
                           "adapt_steps": row["adapt_steps"], "adapt_lr": row["adapt_lr"],
                           "sampling_temperature": row["temperature"], "nll_lr": row.get("nll_lr", row["adapt_lr"])}
    if name == "pretrain":
        out.update({"train.pretrain_steps": params.train.pretrain_steps, "eval.pretrain_lr": params.eval.pretrain_lr})
    return out


def _log_grids(client: Any, run_id: str, model: str, files: list[Path]) -> None:
    for f in files:
        if f.name.startswith(f"grid_{model}_") and f.suffix == ".png":
            with Image.open(f) as img:
                client.log_image(run_id, img.copy(), key=f.stem, step=0)


def log_evaluation(params: Params, root: Path, run_id: str, report: dict[str, Any], files: list[Path]) -> None:
    """Meta-model metrics, grids (as images) and the rows (as a table) on the run; one nested run
    per baseline with the same metric keys, its own grids and only its own params."""
    from mlflow import MlflowClient

    client = MlflowClient()
    rows = report["rows"]
    log_eval_rows(client, run_id, rows, "meta")
    client.set_tag(run_id, "eval.extractor", f"{report['extractor']['name']}:{report['extractor']['digest']}")
    client.set_tag(run_id, "eval.protocol_digest", report["protocol"]["digest"])
    if report["extractor"].get("heldout_accuracy") is not None:
        client.log_metric(run_id, "extractor.heldout_accuracy", float(report["extractor"]["heldout_accuracy"]))
    columns = list(rows[0])
    client.log_table(run_id, data={c: [r.get(c) for r in rows] for c in columns}, artifact_file=TABLE_FILE)
    _log_grids(client, run_id, "meta", files)
    for name in sorted({r["model"] for r in rows} - {"meta"}):
        child = start_run(params, root, f"baseline-{name}", parent_run_id=run_id,
                          extra_tags={"metagen.kind": "baseline", "eval.protocol_digest": report["protocol"]["digest"]},
                          run_params=_baseline_params(params, rows, name))
        log_eval_rows(client, child, rows, name)
        _log_grids(client, child, name, files)
        finish_run(child)
    for f in files:
        client.log_artifact(run_id, str(f), "eval")


def log_timings(run_id: str, summary: dict[str, Any], path: Path) -> None:
    """Each phase's seconds as a ``timing.<phase>`` metric, and the JSON as an artifact."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from components.timing import metric_key

    now = int(time.time() * 1000)
    metrics = [Metric(metric_key(name), entry["seconds"], now, 0) for name, entry in summary["phases"].items()]
    metrics += [Metric(f"timing.{k}", summary[k], now, 0) for k in ("total_s", "overhead_s")]
    client = MlflowClient()
    for i in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[i : i + 900])
    client.log_artifact(run_id, str(path))


def describe_run(run_id: str, markdown: str) -> None:
    """The run's description (the MLflow UI's Description box): markdown."""
    from mlflow import MlflowClient

    MlflowClient().set_tag(run_id, "mlflow.note.content", markdown[:60000])


def ui_base(uri: str) -> str:
    """Where a user opens the MLflow UI for this store (``mlflow ui`` serves a file store on 5000)."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def run_url(uri: str, run_id: str) -> str:
    from mlflow import MlflowClient

    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(uri: str, name: str, version: str) -> str:
    return f"{ui_base(uri)}/#/models/{name}/versions/{version}"
