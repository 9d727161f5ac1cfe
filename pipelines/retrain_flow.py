"""Flow `retrain`: ingest -> (tune) -> train -> evaluate -> register -> promote, one MLflow parent run."""

from __future__ import annotations

from typing import Any

from pathlib import Path

from prefect import flow, task
from prefect.runtime import flow_run

from components.params import Params, with_updates
from components.stopping import stoppable
from components.evaluation.report import run_summary
from components.threads import figure_threads, threads_beside_training
from components.timing import phase
from components.registry import champion_tags
from components.tracking import (configure, describe_run, lineage_tags, mlflow_step, run_url, tracked_run,
                                 tracking_uri, unchanged_since, version_url)
from pipelines.common import (finish_timings, publish_artifacts, rename_flow_run, resolve, retry_unless_user_error,
                              run_name, start_timings)
from pipelines.evaluate_flow import evaluate, feature_extractor, pretrain_baseline, reference_scores
from pipelines.ingest_flow import ingest
from pipelines.promote_flow import promote
from pipelines.train_flow import train
from pipelines.tune_flow import tune


@task(name="same-as-champion", retries=2, retry_delay_seconds=3, retry_condition_fn=retry_unless_user_error)
def same_as_champion(root: str, params: Params, data: dict[str, Any]) -> str | None:
    """Why this run need not train (its data, code and params are the champion's), or None."""
    name = params.registry.model_name
    with mlflow_step("reading the champion's lineage"):
        configure(params.registry, Path(root))
        champion = champion_tags(name)
    if champion is None or not unchanged_since(lineage_tags(params, data), champion[1]):
        return None
    return (f"not retrained: data {str(data['raw_md5'])[:12]}, code {str(data['git_commit'])[:10]} and params "
            f"{params.digest()} are those {name} v{champion[0]} (champion) was trained on")


@flow(name="retrain", log_prints=True, flow_run_name=run_name("retrain"))
def retrain(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
            local: bool = False, params: Params | None = None, skip_if_unchanged: bool = False) -> dict[str, Any]:
    """``skip_if_unchanged`` (the scheduled deployment): when the data, code and params are the
    champion's, stop after ingest and say so."""
    start_timings()
    base, params = resolve(root, params_path, overrides, params)
    root = str(base)
    with phase("ingest"):
        data = ingest(root, params_path, overrides, params=params)
    with phase("prefect calls", "overhead"):
        flow_run_label = rename_flow_run("retrain", data.get("raw_md5"))
    if skip_if_unchanged:
        same = same_as_champion(root, params, data)
        if same is not None:
            print(same)
            return {"skipped": same, "flow_run_name": flow_run_label, "data": data}
    with tracked_run(params, base, "retrain", data_version=data, extra_tags={"metagen.kind": "retrain"}) as run_id:
        trained_with = params
        if params.tune.enabled:
            with phase("tune"):
                best = tune(root, run_id=run_id, params=params)
            trained_with = with_updates(params, best["best_config"])
        # the references do not need the model: the extractor and `pretrain` train side by side
        # meanwhile, then the baselines are scored, each on the cores the training leaves
        beside = figure_threads(trained_with.train, threads_beside_training(trained_with.train, local, streams=2))
        with stoppable():  # an extractor that cannot be trusted stops the training
            features = feature_extractor.submit(root, trained_with, beside, stop_training=True)
            pretrained = pretrain_baseline.submit(root, trained_with, beside)
            references = reference_scores.submit(root, trained_with, figure_threads(trained_with.train, threads_beside_training(trained_with.train, local, streams=1)),
                                                 wait_for=[features, pretrained])
            with phase("train"):
                trained = train(root, local=local, run_id=run_id, params=trained_with)
        with phase("wait for the reference scores"):
            for future in (features, pretrained, references):  # an upstream failure raises its own error
                future.result()
        with phase("evaluate"):
            evaluated = evaluate(root, checkpoint=trained["checkpoint"], run_id=run_id, params=trained_with)
        with phase("register and gate"):
            decision = promote(root, run_id=run_id, checkpoint=trained["checkpoint"], report=evaluated["report"],
                               tags=lineage_tags(trained_with, data), params=trained_with)
        with phase("mlflow logging", "overhead"):
            summary = run_summary(evaluated["report"], decision, params.registry.model_name)
            describe_run(run_id, summary)
    uri, name, version = tracking_uri(params.registry, base), params.registry.model_name, decision["version"]
    links = {"run_url": run_url(uri, run_id), "version_url": version_url(uri, name, version)}
    with phase("prefect calls", "overhead"):
        publish_artifacts(summary, {
            "mlflow-run": (links["run_url"], f"MLflow run {run_id} (metrics, grids, evaluation table)"),
            "model-version": (links["version_url"], f"registered model {name} v{version} ({decision['decision']})"),
        })
    timings, timings_path = finish_timings(base, params, run_id)
    return {"timings": timings, "timings_path": str(timings_path), "run_id": run_id, "flow_run_id": str(flow_run.id), "flow_run_name": flow_run_label, **links, "data": data, "checkpoint": trained["checkpoint"], "decision": decision,
            "report": evaluated["report"], "markdown": evaluated["markdown"], "files": evaluated["files"],
            "tracking_uri": tracking_uri(params.registry, base), "model_name": params.registry.model_name}
