"""The FID promotion gate against a real `mlflow server`: thresholds, re-evaluation, races, outages."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from components.errors import MetagenError
import numpy as np

from components.evaluation.bootstrap import FidUnits
from components.gate import GateRules
from components.registry import fid_key, promote

pytestmark = [pytest.mark.integration]


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A registered model of this test's own (the tests share one MLflow server)."""
    return "gate-" + request.node.name


def _new_versions(client, name: str, n: int) -> list[str]:  # noqa: ANN001
    """``n`` versions of ``name``, each the `model` folder of a real run."""
    import tempfile

    client.create_registered_model(name)
    exp = client.get_experiment_by_name("gate") or client.get_experiment(client.create_experiment("gate"))
    out = []
    for i in range(n):
        run = client.create_run(exp.experiment_id)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "weights.txt").write_text(str(i))
            client.log_artifacts(run.info.run_id, tmp, "model")
        source = f"{run.info.artifact_uri}/model"
        out.append(str(client.create_model_version(name, source=source, run_id=run.info.run_id).version))
    return out


def _versions(url: str, name: str, n: int) -> list[str]:
    from mlflow import MlflowClient

    return _new_versions(MlflowClient(url, url), name, n)


def _champion(url: str, name: str) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient(url, url).get_model_version_by_alias(name, "champion").version)


RULES = GateRules(sampling="prior", fid_threshold=20.0, max_copy_rate=0.1, require_beats_baselines=True,
                  bootstrap_samples=100)
REAL = [[np.random.default_rng([r, c]).normal(0, 1, (6, 3)) for c in range(4)] for r in range(2)]
KNOWN: dict[tuple[str, str], FidUnits] = {}  # (model, version) -> the units its evaluation logged


def units_of(fid: float, protocol: str = "proto") -> FidUnits:
    """Samples that are the held-out features moved by sqrt(fid): FID exactly ``fid`` on every
    bootstrap draw, so two of them differ without noise (a tie is an exact tie)."""
    move = np.array([np.sqrt(fid), 0.0, 0.0])
    return FidUnits("ext", protocol, [[u + move for u in r] for r in REAL], REAL)


def _row(model: str, sampling: str, fid: float, copy: float) -> dict:
    return {"model": model, "sampling": sampling, "fid_mean": fid, "copy_rate": copy}


def _report(fid: float, copy: float = 0.0, baselines: list[dict] | None = None, protocol: str = "proto") -> dict:
    """An eval.json as the evaluation writes it, reduced to what the gate reads (the baselines'
    intervals without noise)."""
    rows = [_row("meta", "prior", fid, copy), _row("meta", "support", fid + 1, copy)]
    comparisons = [{"model": b["model"], "sampling": b["sampling"], "fid": fid, "other_fid": b["fid_mean"],
                    "difference": fid - b["fid_mean"], "low": fid - b["fid_mean"], "high": fid - b["fid_mean"],
                    "confidence": 0.95} for b in baselines or []]
    return {"extractor": {"digest": "ext"}, "protocol": {"digest": protocol}, "rows": rows + (baselines or []),
            "comparisons": comparisons}


def gate(name: str, version: str, fid: float, rules: GateRules = RULES, champion_units=None, **kw) -> object:  # noqa: ANN001
    units = units_of(fid, kw.get("protocol", "proto"))
    KNOWN[(name, version)] = units
    return promote(name, version, _report(fid, **kw), units, rules,
                   champion_units or (lambda v: KNOWN[(name, v)]))



def test_threshold_then_better_then_worse(mlflow_srv, name: str) -> None:  # noqa: ANN001
    import mlflow

    _, url = mlflow_srv
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    v1, v2, v3, v4 = _versions(url, name, 4)
    d = gate(name, v1, 50.0)
    assert d.decision == "rejected" and "FID 50.00 > registry.fid_threshold 20 (FAIL)" in d.reason
    d = gate(name, v2, 10.0)
    assert d.decision == "promoted" and "no champion yet" in d.reason and _champion(url, name) == v2
    d = gate(name, v3, 12.0)
    worse = f"FID 12.00 vs champion v{v2} 10.00: difference +2.00 [+2.00, +2.00] (90% interval): worse"
    assert d.decision == "rejected" and f"{worse} (FAIL)" in d.reason
    d = gate(name, v4, 10.0)  # a tie keeps the champion
    assert d.decision == "rejected" and _champion(url, name) == v2
    assert "difference +0.00 [+0.00, +0.00] (90% interval): not better (FAIL)" in d.reason
    from mlflow import MlflowClient

    client = MlflowClient(url, url)
    v3_info = client.get_model_version(name, v3)
    assert v3_info.tags["gate.decision"] == "rejected"
    assert v3_info.tags["gate.failed"] == worse
    assert "rejected" in v3_info.description and worse in v3_info.description


def test_a_copier_and_a_loser_to_a_baseline_are_rejected(mlflow_srv, name: str) -> None:  # noqa: ANN001
    import mlflow

    _, url = mlflow_srv
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    v1, v2, v3 = _versions(url, name, 3)
    replay = _row("support_replay", "replay", 0.5, 1.0)
    baselines = [_row("pretrain", "prior", 9.0, 0.0), _row("pretrain", "support", 6.0, 0.02),
                 _row("scratch", "support", 1.0, 0.6), replay]
    d = gate(name, v1, 3.0, copy=0.9, baselines=baselines)  # memorises its supports
    assert d.decision == "rejected" and "copy_rate 0.900 > registry.max_copy_rate 0.1 (FAIL)" in d.reason
    d = gate(name, v2, 7.0, baselines=baselines)  # loses to pretrain's support sampling
    assert d.decision == "rejected" and "FID 7.00 vs pretrain (support) 6.00: difference +1.00" in d.reason
    assert "scratch excluded: a copier (copy_rate 0.600 > 0.1)" in d.reason
    assert "support_replay excluded: a copier" in d.reason
    d = gate(name, v3, 5.0, baselines=baselines)
    assert d.decision == "promoted" and "FID 5.00 vs pretrain (support) 6.00: difference -1.00 [-1.00, -1.00] (90% interval): better (pass)" in d.reason
    assert _champion(url, name) == v3


def test_champion_under_other_digests_is_reevaluated(mlflow_srv, name: str) -> None:  # noqa: ANN001
    import mlflow
    from mlflow import MlflowClient

    _, url = mlflow_srv
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    v1, v2 = _versions(url, name, 2)
    assert gate(name, v1, 5.0, protocol="old-protocol").decision == "promoted"
    calls: list[str] = []

    def reevaluate(v: str) -> FidUnits:
        calls.append(v)
        return units_of(9.0, "new-protocol")  # v1 on the new protocol

    d = gate(name, v2, 8.0, champion_units=reevaluate, protocol="new-protocol")
    assert calls == [v1]
    assert d.decision == "promoted" and f"vs champion v{v1} 9.00: difference -1.00" in d.reason
    client = MlflowClient(url, url)
    assert float(client.get_model_version(name, v1).tags[fid_key("ext", "new-protocol")]) == pytest.approx(9.0)
    assert client.get_model_version_by_alias(name, "previous").version == v1
    assert _champion(url, name) == v2


def test_racing_promotions_end_with_the_better_model(mlflow_srv, name: str) -> None:  # noqa: ANN001
    import mlflow

    _, url = mlflow_srv
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    versions = _versions(url, name, 6)
    fids = [9.0, 4.0, 7.0, 3.0, 8.0, 5.0]
    barrier = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def go(v: str, fid: float) -> None:
        try:
            barrier.wait()
            gate(name, v, fid)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=go, args=(v, f)) for v, f in zip(versions, fids, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert _champion(url, name) == versions[fids.index(min(fids))]


def test_concurrent_alias_writes_survive_the_stores_race(mlflow_srv, name: str) -> None:  # noqa: ANN001
    """MLflow's SQL store sets an alias by select-then-insert, so writers racing on a missing alias
    can hit a UNIQUE constraint error (seen in CI: raw clients fail in a few of 15 rounds here).
    The gate's writes retry such conflicts: every round must end with one valid champion."""
    from mlflow import MlflowClient

    from components.registry import _set_alias

    _, url = mlflow_srv
    client = MlflowClient(url, url)
    versions = _new_versions(client, name, 6)
    errors: list[BaseException] = []
    for _ in range(15):
        client.delete_registered_model_alias(name, "champion")
        barrier = threading.Barrier(len(versions))

        def go(v: str) -> None:
            try:
                barrier.wait()
                _set_alias(client, name, "champion", v)
            except BaseException as err:  # noqa: BLE001
                errors.append(err)

        threads = [threading.Thread(target=go, args=(v,)) for v in versions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert client.get_model_version_by_alias(name, "champion").version in versions
    assert not errors


def test_unreachable_server_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from components.tracking import configure
    from tests.conftest import make_params
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(MetagenError, match=rf"MLflow tracking server \(MLFLOW_TRACKING_URI\) unreachable at {url}"):
        configure(make_params().registry, tmp_path)


def test_promote_against_a_dead_server_fails_at_its_start_and_moves_no_alias(prefect_api: str, mlflow_own, project: Path) -> None:  # noqa: ANN001
    """The tracking server stops before `promote`: the step fails at its start with the server
    named (no task runs against a dead server), and no alias moves."""
    import mlflow
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from components.meta.trainer import train_local
    from components.params import load_params
    from pipelines.ingest_flow import ingest
    from pipelines.promote_flow import promote as promote_flow
    from tests.fixtures import TINY, registry_names

    server, url = mlflow_own
    ingest(str(project), "params.yaml", TINY)
    params = load_params(project / "params.yaml", TINY)
    result = train_local(params, project / "prepared", project / "checkpoints", progress=False)
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    client = MlflowClient(url, url)
    model, _ = registry_names(project)  # the name the promote flow registers under
    v_champ = _versions_named(client, model)
    client.set_registered_model_alias(model, "champion", v_champ)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    report = {"extractor": {"digest": "e"}, "protocol": {"digest": "p"},
              "rows": [{"model": "meta", "sampling": "support", "fid_mean": 1.0}]}

    server.stop()
    state = promote_flow(str(project), "params.yaml", TINY, run_id=run_id, checkpoint=str(result.checkpoint),
                         report=report, return_state=True)
    assert state.is_failed()
    with pytest.raises(MetagenError, match=rf"MLflow tracking server \(MLFLOW_TRACKING_URI\) unreachable at {url}"
                       r".*before the promote step"):
        state.result()

    import asyncio

    async def task_runs() -> list:
        async with get_client() as pc:
            return await pc.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))

    names = [r.name for r in asyncio.run(task_runs())]
    assert not any(n.startswith(("register-model", "promotion-gate")) for n in names), names

    server.start()
    assert str(client.get_model_version_by_alias(model, "champion").version) == v_champ
    assert [m.version for m in client.search_model_versions(f"name='{model}'")] == [v_champ]


def _versions_named(client, name: str) -> str:  # noqa: ANN001
    return _new_versions(client, name, 1)[0]


def test_tracking_server_gone_mid_run_is_one_line_naming_server_and_step(mlflow_own, tmp_path: Path) -> None:  # noqa: ANN001
    """MLflow lost after the run started: the step that logs fails with one line naming the server
    and the step (after MLflow's bounded retries), not a stack of HTTP tracebacks."""
    from mlflow import MlflowClient

    from components.tracking import log_training, mlflow_step

    import mlflow

    server, url = mlflow_own
    mlflow.set_tracking_uri(url)  # the process-wide URI the logging uses (another test may have set it)
    client = MlflowClient(url)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    server.stop()
    with pytest.raises(MetagenError) as err:
        with mlflow_step("logging the training"):
            log_training(run_id, [{"step": 1, "train_loss": 0.5}], tmp_path / "checkpoint.pt", "local")
    message = str(err.value)
    assert f"MLflow tracking server {url} unreachable while logging the training" in message
    assert "\n" not in message and "metagen promote" in message


def test_rollback_and_the_audit_trail(mlflow_srv, name: str) -> None:  # noqa: ANN001
    import mlflow

    from components.registry import alias_history, rollback

    _, url = mlflow_srv
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    v1, v2, v3 = _versions(url, name, 3)
    gate(name, v1, 10.0)
    gate(name, v2, 5.0)
    move = rollback(name, None, "v2 draws blank images")
    assert (move.before, move.after, move.decision, move.reason) == (v2, v1, "rollback", "v2 draws blank images")
    from mlflow import MlflowClient

    client = MlflowClient(url, url)
    assert _champion(url, name) == v1 and client.get_model_version_by_alias(name, "previous").version == v2
    assert client.get_model_version(name, v2).tags["gate.rolled_back"] == "v2 draws blank images"
    # a later gate does not bring the rolled-back version back, though its FID (5) is the lowest
    assert gate(name, v3, 7.0).decision == "promoted" and _champion(url, name) == v3
    moves = alias_history(name)
    assert [(m.before, m.after, m.decision) for m in moves] == [
        (None, v1, "promoted"), (v1, v2, "promoted"), (v2, v1, "rollback"), (v1, v3, "promoted")]
    assert all(m.user and m.time.endswith("Z") for m in moves)
    assert moves[1].run_id and "vs champion v1" in moves[1].reason  # the gate's run and its reason
    with pytest.raises(MetagenError, match="has no version 99"):
        rollback(name, "99", "")
    with pytest.raises(MetagenError, match=f"v{v3} is already champion"):
        rollback(name, v3, "")


def test_a_version_that_passes_waits_for_approval(mlflow_srv, name: str) -> None:  # noqa: ANN001
    """registry.require_approval: the gate's pass moves nothing; a person approves (champion moves
    through the same reconcile, recorded) or rejects (recorded with why)."""
    from dataclasses import replace

    import mlflow

    from components.approval import approve, reject
    from components.registry import alias_history

    _, url = mlflow_srv
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    v1, v2, v3 = _versions(url, name, 3)
    rules = replace(RULES, require_approval=True)
    d = gate(name, v1, 10.0, rules)
    assert d.decision == "awaiting approval" and d.champion_after is None
    from mlflow import MlflowClient

    client = MlflowClient(url, url)
    assert not client.get_registered_model(name).aliases
    assert approve(name, v1, "looked at the grids") == v1 and _champion(url, name) == v1
    assert gate(name, v2, 5.0, rules).decision == "awaiting approval" and _champion(url, name) == v1
    with pytest.raises(MetagenError, match="needs its reason"):
        reject(name, v2, "")
    reject(name, v2, "blurry faces")
    assert _champion(url, name) == v1 and client.get_model_version(name, v2).tags["approval.reason"] == "blurry faces"
    with pytest.raises(MetagenError, match=f"v{v2} is not awaiting approval \\(approval: rejected"):
        approve(name, v2, "")
    assert gate(name, v3, 12.0, rules).decision == "rejected"  # worse than the champion: nothing to approve
    with pytest.raises(MetagenError, match="not awaiting approval"):
        approve(name, v3, "")
    moves = alias_history(name)
    assert [(m.after, m.decision) for m in moves] == [(v1, "promoted"), (v1, f"v{v2} not approved")]
    assert "approved by " in moves[0].reason and "looked at the grids" in moves[0].reason

def test_a_person_answers_in_the_prefect_ui(mlflow_srv, prefect_api, name: str) -> None:  # noqa: ANN001
    """Issue 32 item 3: with registry.approval_wait_s the approval is a paused `approval` flow run
    whose Resume form (the Prefect UI's, here through the same API) takes the answer."""
    import time
    from dataclasses import replace

    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.flow_runs import resume_flow_run

    from components.registry import alias_history
    from pipelines.approval_flow import approval
    from tests.conftest import make_params

    _, url = mlflow_srv
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    (v1,) = _versions(url, name, 1)
    assert gate(name, v1, 10.0, replace(RULES, require_approval=True)).decision == "awaiting approval"
    params = make_params(f"registry.model_name={name}", f"registry.tracking_uri={url}", "registry.require_approval=true")
    out: dict = {}
    waiting = threading.Thread(target=lambda: out.update(answer=approval(".", params, v1, 120, poll_s=1)))
    waiting.start()
    paused = []
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 90
        while not paused and time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"approve-v{v1}"])))
            paused = [r for r in runs if r.state is not None and r.state.is_paused()]
            time.sleep(0.5)
    assert paused, "the approval flow run never paused for input"
    assert _champion_or_none(url, name) is None  # nothing moves while it waits
    resume_flow_run(paused[0].id, run_input={"approve": True, "reason": "grids look right"})
    waiting.join(120)
    assert out["answer"]["decision"] == "promoted" and _champion(url, name) == v1
    (move,) = alias_history(name)
    assert move.after == v1 and "in the Prefect UI: grids look right" in move.reason


def _champion_or_none(url: str, name: str) -> str | None:
    from mlflow import MlflowClient

    aliases = MlflowClient(url, url).get_registered_model(name).aliases
    return aliases.get("champion")


