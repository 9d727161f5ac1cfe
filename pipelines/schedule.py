"""Scheduled retraining: the `retrain` flow as a Prefect deployment with the cron of params.yaml."""

from __future__ import annotations

from typing import Any

from components.params import Params

DEPLOYMENT = "metagen-retrain"


def retrain_deployment(params: Params, root: str, params_path: str = "params.yaml") -> Any:
    """The deployment object (``RunnerDeployment``) for ``retrain`` with its cron schedule: one run
    at a time (a tick while a run goes on is cancelled), and a tick whose data, code and params are
    the champion's does not train again."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from pipelines.retrain_flow import retrain

    return retrain.to_deployment(
        name=DEPLOYMENT,
        schedules=[Cron(params.schedule.cron, timezone=params.schedule.timezone)],
        parameters={"root": root, "params_path": params_path, "skip_if_unchanged": True},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        tags=["metagen", "retrain"],
        description="Scheduled few-shot generator retraining (ingest, tune, train, evaluate, promote)",
    )


def register_retrain(params: Params, root: str, params_path: str = "params.yaml") -> str:
    """Register the deployment with the Prefect API (no worker started); return its id."""
    return str(retrain_deployment(params, root, params_path).apply())


def serve_retrain(params: Params, root: str, params_path: str = "params.yaml") -> None:
    """Register and serve: this process runs `retrain` at every cron tick until stopped."""
    from prefect import serve

    serve(retrain_deployment(params, root, params_path))
