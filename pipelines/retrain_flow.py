"""Flow `retrain`: ingest -> (tune) -> train -> evaluate -> register -> promote, one MLflow parent run."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pipelines.common import load
from pipelines.evaluate_flow import evaluate
from pipelines.ingest_flow import ingest
from pipelines.promote_flow import promote
from pipelines.train_flow import train
from pipelines.tune_flow import tune


@flow(name="retrain", log_prints=True)
def retrain(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
            local: bool = False) -> dict[str, Any]:
    from components.tracking import finish_run, lineage_tags, start_run, tracking_uri

    overrides = list(overrides or [])
    base, params = load(root, params_path, overrides)
    data = ingest(str(base), params_path, overrides)
    run_id = start_run(params, base, "retrain", data_version=data, extra_tags={"metagen.kind": "retrain"})
    ok = False
    try:
        if params.tune.enabled:
            best = tune(str(base), params_path, overrides, run_id=run_id)
            overrides += [f"{k}={v}" for k, v in best["best_config"].items()]
        trained = train(str(base), params_path, overrides, local=local, run_id=run_id)
        evaluated = evaluate(str(base), params_path, overrides, checkpoint=trained["checkpoint"], run_id=run_id)
        decision = promote(str(base), params_path, overrides, run_id=run_id, checkpoint=trained["checkpoint"],
                           report=evaluated["report"], tags=lineage_tags(params, data))
        ok = True
    finally:
        finish_run(run_id, ok)
    return {"run_id": run_id, "data": data, "checkpoint": trained["checkpoint"], "decision": decision,
            "report": evaluated["report"], "markdown": evaluated["markdown"], "files": evaluated["files"],
            "tracking_uri": tracking_uri(params, base), "model_name": params.registry.model_name}
