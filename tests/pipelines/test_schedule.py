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
    # scheduled runs never overlap (a tick during a run is cancelled) and skip an unchanged champion
    assert dep.global_concurrency_limit.limit == 1 and dep.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert dep.parameters["skip_if_unchanged"] is True


def test_prefect_yaml_deployments_match_the_served_one() -> None:
    import yaml

    for dep in yaml.safe_load((PROJECT / "prefect.yaml").read_text())["deployments"]:
        assert dep["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}, dep["name"]
        assert dep["parameters"]["skip_if_unchanged"] is True, dep["name"]


def test_unchanged_means_the_same_data_code_and_params_and_a_clean_checkout() -> None:
    from components.tracking import unchanged_since

    tags = {"data.raw_md5": "d", "git.commit": "c", "params.digest": "p", "git.dirty": "False"}
    assert unchanged_since(tags, dict(tags))
    for key, other in (("data.raw_md5", "d2"), ("git.commit", "c2"), ("params.digest", "p2"), ("git.dirty", "True")):
        assert not unchanged_since({**tags, key: other}, tags), key
    assert not unchanged_since({**tags, "git.commit": "None"}, {**tags, "git.commit": "None"})  # not a git checkout
