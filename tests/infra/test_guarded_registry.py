"""A guarded registry: a real `mlflow server --app-name basic-auth`. Without credentials nothing is
served; a user with READ on the model cannot move `champion`; the pipeline's user can, and the
promotion gate works end to end with the credentials MLflow reads from the environment."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from components.gate import GateRules
from tests.pipelines.test_registry import _new_versions, gate
from tests.servers import mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]
NAME = "guarded"


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[tuple[str, tuple[str, str]]]:
    admin = ("admin", secrets.token_urlsafe(12))  # made here: no password lives in the repo
    server, url = mlflow_server(tmp_path / "mlflow", admin_password=admin[1])
    server.start()
    yield url, admin
    server.stop()


def _admin_client(monkeypatch: pytest.MonkeyPatch, url: str, admin: tuple[str, str]):  # noqa: ANN202
    """MLflow's own client of the auth app, as the README tells an admin to use it."""
    from mlflow.server import get_app_client

    _as(monkeypatch, url, admin)
    return get_app_client("basic-auth", tracking_uri=url)


def _as(monkeypatch: pytest.MonkeyPatch, url: str, who: tuple[str, str]) -> None:
    import mlflow

    mlflow.set_tracking_uri(url)  # a URI set by an earlier test would win over the environment
    mlflow.set_registry_uri(url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", who[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", who[1])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def test_only_the_pipeline_user_moves_champion(auth_server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    url, admin = auth_server
    # no credentials: refused
    anonymous = requests.get(f"{url}/api/2.0/mlflow/registered-models/search", timeout=10)
    assert anonymous.status_code == 401

    pipeline, reader = ("pipeline", secrets.token_urlsafe(12)), ("reader", secrets.token_urlsafe(12))
    users = _admin_client(monkeypatch, url, admin)
    for user, password in (pipeline, reader):
        users.create_user(username=user, password=password)

    # the pipeline's user creates the model (and so manages it), registers versions, runs the gate;
    # the admin grants the reader READ on the model
    _as(monkeypatch, url, pipeline)
    client = MlflowClient()
    v1, v2 = _new_versions(client, NAME, 2)
    rules = GateRules(sampling="prior", fid_threshold=20.0, max_copy_rate=0.1, require_beats_baselines=True, bootstrap_samples=100)
    assert gate(NAME, v1, 9.0, rules).decision == "promoted"
    _admin_client(monkeypatch, url, admin).grant_user_permission(reader[0], "registered_model", NAME, "READ")

    # the reader sees the model and its champion, but cannot move the alias or tag versions
    _as(monkeypatch, url, reader)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v1
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        client.set_registered_model_alias(NAME, "champion", v2)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        client.set_model_version_tag(NAME, v2, "gate.decision", "promoted")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v1

    # the pipeline's user's credentials are cached by now (auth_cache_ttl_seconds): a wrong password
    # for that user is still refused
    search = f"{url}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, auth=pipeline, timeout=10).status_code == 200
    assert requests.get(search, auth=(pipeline[0], pipeline[1] + "x"), timeout=10).status_code == 401

    # the pipeline's user promotes the better version through the gate
    _as(monkeypatch, url, pipeline)
    assert gate(NAME, v2, 5.0, rules).decision == "promoted"
    assert str(MlflowClient().get_model_version_by_alias(NAME, "champion").version) == v2

    # a rollback goes through the same credentials: the reader is refused, the pipeline's user moves it
    from components.errors import MetagenError
    from components.registry import alias_history, rollback

    _as(monkeypatch, url, reader)
    with pytest.raises(MetagenError, match="cannot roll back .*(PERMISSION_DENIED|Permission denied)"):
        rollback(NAME, None, "")
    _as(monkeypatch, url, pipeline)
    assert rollback(NAME, None, "drill").after == v1
    assert [(m.after, m.decision, m.user) for m in alias_history(NAME)][-1] == (v1, "rollback", pipeline[0])

    # approval too: a version awaiting it cannot be approved by the reader, the pipeline's user can
    from dataclasses import replace

    from components.approval import approve

    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name("gate").experiment_id)
    v3 = str(client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)
    assert gate(NAME, v3, 2.0, replace(rules, require_approval=True)).decision == "awaiting approval"
    _as(monkeypatch, url, reader)
    with pytest.raises(MetagenError, match="cannot approve .*(PERMISSION_DENIED|Permission denied)"):
        approve(NAME, v3, "")
    _as(monkeypatch, url, pipeline)
    assert approve(NAME, v3, "checked") == v3
