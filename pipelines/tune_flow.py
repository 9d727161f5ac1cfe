"""Flow `tune`: Ray Tune with ASHA over tune.search_space; trials become nested MLflow runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from components.params import Params
from components.tracking import log_tune, mlflow_step, tracked_run
from components.tuning import run_tune
from pipelines.common import resolve, retry_unless_user_error, run_name


@task(name="ray-tune")
def search(root: str, params: Params) -> dict[str, Any]:
    out = run_tune(params, Path(root) / params.data.prepared_dir, Path(root) / params.eval.reports_dir)
    return {"best_config": out.best_config, "best_metric": out.best_metric, "trials": out.trials,
            "table": str(out.table_path)}


@task(name="track-tune", retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_user_error)
def track_tune(root: str, params: Params, run_id: str, result: dict[str, Any]) -> None:
    with mlflow_step("logging the Tune trials"):
        log_tune(params, Path(root), run_id, result["trials"], Path(result["table"]))


@flow(name="tune", log_prints=True, flow_run_name=run_name("tune"))
def tune(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
         run_id: str | None = None, params: Params | None = None) -> dict[str, Any]:
    base, params = resolve(root, params_path, overrides, params)
    with tracked_run(params, base, "tune", run_id) as run_id:
        result = search(str(base), params)
        track_tune(str(base), params, run_id, result)
    print(f"best {result['best_config']} (val -ELBO {result['best_metric']:.2f}); table {result['table']}")
    return result
