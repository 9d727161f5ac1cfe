"""Flow `tune`: Ray Tune with ASHA over tune.search_space; trials become nested MLflow runs."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from pipelines.common import load


@task(name="ray-tune")
def search(root: str, params_json: dict[str, Any]) -> dict[str, Any]:
    from pathlib import Path

    from components.params import validate_params
    from components.tuning import run_tune

    params = validate_params(params_json)
    out = run_tune(params, Path(root) / params.data.prepared_dir, Path(root) / params.eval.reports_dir)
    return {"best_config": out.best_config, "best_metric": out.best_metric, "trials": out.trials,
            "table": str(out.table_path)}


@task(name="track-tune", retries=2, retry_delay_seconds=2)
def track_tune(root: str, params_json: dict[str, Any], run_id: str, result: dict[str, Any]) -> None:
    from pathlib import Path

    from components.params import validate_params
    from components.tracking import log_tune

    log_tune(validate_params(params_json), Path(root), run_id, result["trials"], Path(result["table"]))


@flow(name="tune", log_prints=True)
def tune(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
         run_id: str | None = None) -> dict[str, Any]:
    from components.tracking import finish_run, start_run

    base, params = load(root, params_path, overrides)
    own = run_id is None
    if own:
        run_id = start_run(params, base, "tune")
    result = search(str(base), params.model_dump(mode="json"))
    track_tune(str(base), params.model_dump(mode="json"), run_id, result)
    if own:
        finish_run(run_id)
    print(f"best {result['best_config']} (val -ELBO {result['best_metric']:.2f}); table {result['table']}")
    return result
