"""Flow `train`: meta-train with Ray Train (or in-process) and track it in MLflow."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from pipelines.common import load


@task(name="meta-train")
def meta_train(root: str, params_json: dict[str, Any], local: bool) -> dict[str, Any]:
    from pathlib import Path

    from components.params import validate_params

    params = validate_params(params_json)
    prepared, out = Path(root) / params.data.prepared_dir, Path(root) / params.train.checkpoint_dir
    if local:
        from components.meta.trainer import train_local

        result = train_local(params, prepared, out, progress=False)
    else:
        from components.training import train_distributed

        result = train_distributed(params, prepared, out)
    return {"checkpoint": str(result.checkpoint), "step": result.step, "history": result.history,
            "final_val_loss": result.final_val_loss}


@task(name="track-training", retries=2, retry_delay_seconds=2)
def track_training(run_id: str, trained: dict[str, Any], local: bool) -> None:
    from pathlib import Path

    from components.tracking import log_training

    log_training(run_id, trained["history"], Path(trained["checkpoint"]), "local" if local else "ray")


@flow(name="train", log_prints=True)
def train(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
          local: bool = False, run_id: str | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    from components.tracking import finish_run, start_run

    base, params = load(root, params_path, overrides)
    own = run_id is None
    if own:
        run_id = start_run(params, base, "train", data_version=data)
    trained = meta_train(str(base), params.model_dump(mode="json"), local)
    track_training(run_id, trained, local)
    if own:
        finish_run(run_id)
    print(f"checkpoint {trained['checkpoint']} at step {trained['step']}; val -ELBO {trained['final_val_loss']}")
    return {**trained, "run_id": run_id}
