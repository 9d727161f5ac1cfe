"""Flow `evaluate`: the few-shot protocol for the meta-model and both baselines, tracked in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from components.data.dvc_ops import dvc_repro
from components.errors import MetagenError
from components.evaluation.evaluate import check_extractor, evaluate as run_protocol
from components.meta.adaptation import AdaptationRule
from components.evaluation.evaluate import baseline_scores, reference_pretrain
from components.meta.trainer import load_learner
from components.params import Params
from components.registry import load_registered_learner
from components.stopping import request_stop
from components.threads import torch_threads
from components.timing import phase
from components.tracking import log_evaluation, mlflow_step, tracked_run
from components.training import eval_mapper
from pipelines.common import finish_timings, resolve, retry_unless_user_error, run_name, start_timings


@task(name="feature-extractor")
def feature_extractor(root: str, params: Params, threads: int | None = None, stop_training: bool = False) -> None:
    """The extractor made ready (domain: the dvc.yaml `features` stage, which DVC skips when its
    inputs are unchanged; ``threads``: its torch threads) and checked; ``stop_training``: a
    training running beside is stopped when the figures could not be trusted."""
    base = Path(root)
    try:
        if params.extractor_kind() == "domain":
            with phase("feature extractor (dvc repro features)"):
                dvc_repro(base, "features", threads)
        check_extractor(params, base / params.eval.features_dir)
    except MetagenError as err:
        if stop_training:
            request_stop(str(err))
        raise


@task(name="few-shot-evaluation")
def run_evaluation(root: str, params: Params, checkpoint: str | None, model_uri: str | None) -> dict[str, Any]:
    base = Path(root)
    if model_uri:
        restored, rule = load_registered_learner(model_uri)
    else:
        restored, rule = load_learner(Path(checkpoint or "")), AdaptationRule.from_params(params)
    out = run_protocol(restored.learner, rule, params, base / params.data.prepared_dir, base / params.eval.reports_dir,
                       base / params.eval.features_dir, base / params.train.checkpoint_dir,
                       history=restored.state.history, mapper=eval_mapper(params))
    return {"report": out.report, "files": [str(p) for p in [out.report_path, out.markdown_path, out.units_path, *out.pictures]],
            "markdown": out.markdown_path.read_text()}


@task(name="pretrain-baseline")
def pretrain_baseline(root: str, params: Params, threads: int) -> None:
    """The `pretrain` baseline trained and cached (it needs neither the extractor nor the model)."""
    base = Path(root)
    with phase("pretrain baseline (alongside training)"), torch_threads(threads):
        reference_pretrain(params, base / params.data.prepared_dir, base / params.train.checkpoint_dir)


@task(name="reference-scores")
def reference_scores(root: str, params: Params, threads: int) -> None:
    """The baselines and the replay reference scored and cached (they do not depend on the
    meta-model: `retrain` runs this while it trains)."""
    base = Path(root)
    with phase("reference scores (alongside training)"), torch_threads(threads):
        baseline_scores(params, base / params.data.prepared_dir, base / params.eval.features_dir,
                        base / params.train.checkpoint_dir, eval_mapper(params))


@task(name="track-evaluation", retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_user_error)
def track_evaluation(root: str, params: Params, run_id: str, result: dict[str, Any]) -> None:
    with mlflow_step("logging the evaluation"):
        log_evaluation(params, Path(root), run_id, result["report"], [Path(f) for f in result["files"]])


@flow(name="evaluate", log_prints=True, flow_run_name=run_name("evaluate"))
def evaluate(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
             checkpoint: str | None = None, model_uri: str | None = None, run_id: str | None = None,
             params: Params | None = None) -> dict[str, Any]:
    top_level = run_id is None  # not a step of `retrain`: this flow's phases are its own report
    if top_level:
        start_timings()
    base, params = resolve(root, params_path, overrides, params)
    checkpoint = checkpoint or (None if model_uri else str(base / params.train.checkpoint_dir))
    with tracked_run(params, base, "evaluate", run_id, extra_tags={"eval.model": model_uri or str(checkpoint)}) as run_id:
        feature_extractor(str(base), params)
        with phase("few-shot evaluation"):
            result = run_evaluation(str(base), params, checkpoint, model_uri)
        with phase("mlflow logging", "overhead"):
            track_evaluation(str(base), params, run_id, result)
    print(result["markdown"])
    if top_level:
        timings, path = finish_timings(base, params, run_id)
        return {**result, "run_id": run_id, "timings": timings, "timings_path": str(path)}
    return {**result, "run_id": run_id}
