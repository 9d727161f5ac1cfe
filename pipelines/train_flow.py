"""Flow `train`: meta-train with Ray Train (or in-process) and track it in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from components.data.lineage import data_version
from components.meta.trainer import TrainResult, train_local
from components.params import Params
from components.timing import phase
from components.tracking import log_training, mlflow_step, tracked_run
from components.training import train_distributed
from pipelines.common import resolve, retry_unless_user_error, run_name


@task(name="meta-train")
def meta_train(root: str, params: Params, local: bool) -> dict[str, Any]:
    prepared, out = Path(root) / params.data.prepared_dir, Path(root) / params.train.checkpoint_dir
    result: TrainResult = (train_local(params, prepared, out, progress=False) if local
                           else train_distributed(params, prepared, out))
    return {"checkpoint": str(result.checkpoint), "step": result.step, "history": result.history,
            "final_val_loss": result.final_val_loss, "grids": result.grids, "resumed_from": result.resumed_from}


@task(name="track-training", retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_unless_user_error)
def track_training(run_id: str, trained: dict[str, Any], local: bool) -> None:
    with mlflow_step("logging the training"):
        log_training(run_id, trained["history"], Path(trained["checkpoint"]), "local" if local else "ray",
                     trained["grids"], trained["resumed_from"])


@flow(name="train", log_prints=True, flow_run_name=run_name("train"))
def train(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
          local: bool = False, run_id: str | None = None, data: dict[str, Any] | None = None,
          params: Params | None = None) -> dict[str, Any]:
    base, params = resolve(root, params_path, overrides, params)
    if run_id is None and data is None:  # standalone: the data version DVC has for prepared/
        data = data_version(base, params.data.prepared_dir).__dict__
    with tracked_run(params, base, "train", run_id, data_version=data) as run_id:
        with phase("meta-train"):
            trained = meta_train(str(base), params, local)
        with phase("mlflow logging", "overhead"):
            track_training(run_id, trained, local)
    print(f"checkpoint {trained['checkpoint']} at step {trained['step']}; val -ELBO {trained['final_val_loss']}")
    return {**trained, "run_id": run_id}
