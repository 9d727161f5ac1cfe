"""Flow `evaluate`: the few-shot protocol for the meta-model and both baselines, tracked in MLflow."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from pipelines.common import load


@task(name="feature-extractor")
def feature_extractor(root: str) -> None:
    """The dvc.yaml `features` stage (DVC skips it when its inputs are unchanged)."""
    from pathlib import Path

    from components.data.dvc_ops import dvc_repro

    dvc_repro(Path(root), "features")


@task(name="few-shot-evaluation")
def run_evaluation(root: str, params_json: dict[str, Any], checkpoint: str | None, model_uri: str | None) -> dict[str, Any]:
    from pathlib import Path

    from components.evaluation.evaluate import evaluate
    from components.meta.adaptation import AdaptationRule
    from components.meta.trainer import load_learner
    from components.params import validate_params
    from components.registry import load_registered_learner

    params, base = validate_params(params_json), Path(root)
    if model_uri:
        restored, rule = load_registered_learner(model_uri)
    else:
        restored, rule = load_learner(Path(checkpoint)), AdaptationRule.from_params(params)
    out = evaluate(restored.learner, rule, params, base / params.data.prepared_dir, base / params.eval.reports_dir,
                   base / params.eval.features_dir, base / params.train.checkpoint_dir, history=restored.state.history)
    return {"report": out.report, "files": [str(p) for p in [out.report_path, out.markdown_path, *out.pictures]],
            "markdown": out.markdown_path.read_text()}


@task(name="track-evaluation", retries=2, retry_delay_seconds=2)
def track_evaluation(root: str, params_json: dict[str, Any], run_id: str, result: dict[str, Any]) -> None:
    from pathlib import Path

    from components.params import validate_params
    from components.tracking import log_evaluation

    log_evaluation(validate_params(params_json), Path(root), run_id, result["report"], [Path(f) for f in result["files"]])


@flow(name="evaluate", log_prints=True)
def evaluate(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
             checkpoint: str | None = None, model_uri: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    from components.tracking import finish_run, start_run

    base, params = load(root, params_path, overrides)
    checkpoint = checkpoint or (None if model_uri else str(base / params.train.checkpoint_dir))
    own = run_id is None
    if own:
        run_id = start_run(params, base, "evaluate", extra_tags={"eval.model": model_uri or str(checkpoint)})
    if params.eval.extractor == "domain":
        feature_extractor(str(base))
    result = run_evaluation(str(base), params.model_dump(mode="json"), checkpoint, model_uri)
    track_evaluation(str(base), params.model_dump(mode="json"), run_id, result)
    if own:
        finish_run(run_id)
    print(result["markdown"])
    return {**result, "run_id": run_id}
