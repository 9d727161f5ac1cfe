"""The scheduled-retraining deployment on a real Prefect server: its cron schedule round trip."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.schedule import DEPLOYMENT, register_retrain
from tests.conftest import PROJECT, make_params

pytestmark = [pytest.mark.integration]


def test_deployment_cron_round_trip(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client

    params = make_params("schedule.cron=15 4 * * 2")
    deployment_id = register_retrain(params, str(PROJECT))

    async def read():  # noqa: ANN202
        async with get_client() as client:
            return await client.read_deployment_by_name(f"retrain/{DEPLOYMENT}")

    dep = asyncio.run(read())
    assert str(dep.id) == deployment_id
    crons = [s.schedule.cron for s in dep.schedules]
    assert crons == ["15 4 * * 2"]
    assert dep.schedules[0].schedule.timezone == "UTC"
    assert dep.parameters["root"] == str(PROJECT)
