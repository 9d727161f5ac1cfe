"""The whole `retrain` flow against a real `mlflow server` and a real Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.errors import MetagenError
from tests.fixtures import TINY, registry_names

pytestmark = [pytest.mark.slow, pytest.mark.integration]
METAGEN = str(Path(sys.executable).parent / "metagen")


def test_retrain_registers_gates_and_generates(prefect_api: str, mlflow_srv, project: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from mlflow import MlflowClient

    from pipelines.retrain_flow import retrain

    _, url = mlflow_srv
    model, _ = registry_names(project)
    # six meta-steps cannot beat the baselines: this run checks the flow, test_registry the gate's rules
    lenient = [*TINY, "registry.require_beats_baselines=false", "registry.max_copy_rate=1.0"]
    first = retrain(str(project), "params.yaml", lenient, local=True)
    d1 = first["decision"]
    assert d1["decision"] == "promoted" and d1["champion_after"] == d1["version"], d1["reason"]
    assert first["tracking_uri"] == url
    # the references' three pieces ran beside the training, each timed
    assert {"train", "feature extractor (dvc repro features)", "pretrain baseline (alongside training)",
            "reference scores (alongside training)", "wait for the reference scores", "evaluate"} <= set(first["timings"]["phases"])

    client = MlflowClient(url)
    mv = client.get_model_version(model, d1["version"])
    for tag in ("data.raw_md5", "data.prepared_md5", "git.commit", "git.dirty", "params.digest",
                "eval.extractor_digest", "eval.protocol_digest", "eval.extractor_heldout_accuracy", "gate.decision",
                "gate.reason"):
        assert mv.tags.get(tag) not in (None, "", "None"), tag
    assert mv.tags["gate.decision"] == "promoted"
    assert client.get_model_version_by_alias(model, "champion").version == d1["version"]
    run = client.get_run(first["run_id"])
    assert run.data.tags["data.raw_md5"] == mv.tags["data.raw_md5"]
    assert "eval.support.fid_mean" in run.data.metrics and "train_loss" in run.data.metrics
    for metric in ("eval.prior.nll_mean", "eval.support.copy_rate", "eval.support.precision", "extractor.heldout_accuracy"):
        assert metric in run.data.metrics, metric
    assert "no champion yet" in mv.description
    # the version's model card: its description and an artifact of its run
    for part in ("## What it is for", "## Data", f"raw `{mv.tags['data.raw_md5']}`", "## Limitations",
                 "light on a dark background", f"models:/{model}/{d1['version']}", "## Promotion gate"):
        assert part in mv.description, part
    card = client.download_artifacts(first["run_id"], "model_card.md", str(tmp_path))
    assert Path(card).read_text() == mv.description
    assert len(client.get_metric_history(first["run_id"], "train_loss")) >= 2
    artifacts = {f.path for f in client.list_artifacts(first["run_id"], "eval")}
    assert {"eval/eval.json", "eval/grid_meta_support.png", "eval/fid.png", "eval/loss.png"} <= artifacts
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{first['run_id']}'")
    assert {c.data.tags["mlflow.runName"] for c in children} >= {"baseline-pretrain", "baseline-scratch"}

    _check_dashboards(url, first, client)

    # the scheduled run: the same data, code and params as the champion: no training, and it says so
    same = retrain(str(project), "params.yaml", lenient, local=True, skip_if_unchanged=True)
    assert same["skipped"].startswith("not retrained: data ") and f"v{d1['version']} (champion)" in same["skipped"]
    assert len(client.search_model_versions(f"name='{model}'")) == 1

    # an impossible threshold: rejected, reason tagged, champion unchanged
    second = retrain(str(project), "params.yaml", [*TINY, "registry.fid_threshold=1e-9"], local=True)
    d2 = second["decision"]
    assert d2["decision"] == "rejected" and "registry.fid_threshold 1e-09 (FAIL)" in d2["reason"]
    for name in ("pretrain", "scratch", "support_replay"):  # every baseline is compared or named as a copier
        assert name in d2["reason"], d2["reason"]
    mv2 = client.get_model_version(model, d2["version"])
    assert mv2.tags["gate.decision"] == "rejected" and mv2.tags["gate.reason"] == d2["reason"]
    assert client.get_model_version_by_alias(model, "champion").version == d1["version"]

    # a consumer: the champion adapts on K images of a held-out class and writes a grid
    support = tmp_path / "support"
    support.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(support / f"s{i}.png")
    out = tmp_path / "grid.png"
    res = subprocess.run([METAGEN, "generate", "--support", str(support), "--n", "16", "--out", str(out)],
                         cwd=project, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"})
    assert res.returncode == 0, res.stdout + res.stderr
    with Image.open(out) as img:
        # make_grid: 8 per row (5 supports + 16 samples = 21 -> 3 rows) of 28 px with 2 px padding
        assert img.size == (8 * 30 + 2, 3 * 30 + 2)

    # the audit trail: the one move (v1 promoted), with its reason; no `previous` to roll back to
    res = subprocess.run([METAGEN, "history"], cwd=project, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "250"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"v{d1['version']}" in res.stdout and "promoted" in res.stdout and "no champion yet" in res.stdout
    res = subprocess.run([METAGEN, "rollback"], cwd=project, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no version is `previous`; name one: --to N" in " ".join(res.stdout.split())


def _check_dashboards(url: str, out: dict, client) -> None:  # noqa: ANN001
    """What a user sees in the MLflow UI, read through the tracking server's REST API, and in the
    Prefect UI, read through the Prefect API."""
    import json

    import requests
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    api = f"{url}/api/2.0/mlflow"
    run = requests.get(f"{api}/runs/get", params={"run_id": out["run_id"]}, timeout=10).json()["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    # the experiment opens on its training runs, not on the GenAI overview
    exp = requests.get(f"{api}/experiments/get", params={"experiment_id": run["info"]["experiment_id"]},
                       timeout=10).json()["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
    # the data as a dataset input whose digest is the DVC md5 of data.dvc
    (inp,) = run["inputs"]["dataset_inputs"]
    assert inp["dataset"]["digest"] == out["data"]["raw_md5"] and inp["dataset"]["source_type"] == "dvc"
    # a markdown description that compares the meta-model with every baseline and gives the gate's decision
    note = tags["mlflow.note.content"]
    for name in ("meta", "pretrain", "scratch", "support_replay", "promoted"):
        assert name in note, name
    # the evaluation rows as a logged table; the grids as images, also at validation steps
    logged = json.loads(tags["mlflow.loggedArtifacts"])
    assert {"path": "eval/rows.json", "type": "table"} in logged
    files = requests.get(f"{api}/artifacts/list", params={"run_id": out["run_id"], "path": "images"},
                         timeout=10).json()["files"]
    names = [f["path"] for f in files]
    assert any("grid_meta_support" in n for n in names) and any("validation_samples" in n for n in names), names
    # baseline child runs: their own grids, few params, and the meta row's metric keys
    meta_keys = {m["key"] for m in run["data"]["metrics"] if m["key"].startswith("eval.support.")}
    assert {"eval.support.fid_mean", "eval.support.copy_rate", "eval.support.nll_mean"} <= meta_keys
    children = client.search_runs([run["info"]["experiment_id"]], f"tags.mlflow.parentRunId = '{out['run_id']}'")
    by_name = {c.data.tags["mlflow.runName"]: c for c in children}
    for name in ("baseline-pretrain", "baseline-scratch", "baseline-support_replay"):
        child = by_name[name]
        assert {"eval.support.fid_mean", "eval.support.copy_rate"} <= set(child.data.metrics), name
        assert len(child.data.params) < 20, (name, len(child.data.params))
    assert client.list_artifacts(by_name["baseline-pretrain"].info.run_id, "images")
    # the registry: a model description, and a version description with the gate's numbers and its run
    name, version = out["model_name"], out["decision"]["version"]
    model = requests.get(f"{api}/registered-models/get", params={"name": name}, timeout=10).json()["registered_model"]
    assert model.get("description")
    mv = requests.get(f"{api}/model-versions/get", params={"name": name, "version": version},
                      timeout=10).json()["model_version"]
    for word in ("pretrain", "scratch", "support_replay", "registry.fid_threshold", out["run_id"]):
        assert word in mv["description"], word
    assert not any(t["key"].startswith(("fid/", "eligible/")) for t in mv.get("tags", []))
    # Prefect: a named flow run with a markdown artifact (the table and the decision) and links
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(out["flow_run_id"])
        assert flow_run.name.startswith("retrain-" + out["data"]["raw_md5"][:8]), flow_run.name
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    by_key = {a.key: a for a in artifacts}
    assert {"metagen-report", "mlflow-run", "model-version"} <= set(by_key), set(by_key)
    report = str(by_key["metagen-report"].data)
    assert "support_replay" in report and "promoted" in report
    # Prefect renders a link artifact as markdown: [text](url)
    assert f"/runs/{out['run_id']})" in str(by_key["mlflow-run"].data)
    assert f"/versions/{version})" in str(by_key["model-version"].data)


def test_generate_without_champion_is_a_clear_error(mlflow_srv, project: Path, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "s").mkdir()
    Image.new("L", (20, 20)).save(tmp_path / "s" / "a.png")
    res = subprocess.run([METAGEN, "generate", "--support", str(tmp_path / "s")], cwd=project,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "nothing has been promoted to champion yet" in res.stdout

    # after a rejection: the newest version named, with why, and how to use it anyway
    from mlflow import MlflowClient

    name, _ = registry_names(project)
    client = MlflowClient(mlflow_srv[1])
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(f"{name}-rejected"))
    v = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version
    client.set_model_version_tag(name, v, "gate.decision", "rejected")
    client.set_model_version_tag(name, v, "gate.failed", "FID 9.00 vs pretrain (support) 8.00: worse")
    res = subprocess.run([METAGEN, "generate", "--support", str(tmp_path / "s")], cwd=project,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "\n" not in res.stdout.strip(), res.stdout
    assert (f"the newest version, v{v}, was rejected by the gate (FID 9.00 vs pretrain (support) 8.00: worse); "
            f"to use it anyway: --model models:/{name}/{v}") in " ".join(res.stdout.split())


def test_failed_step_marks_the_run_failed(prefect_api: str, mlflow_srv, project: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """A step that fails inside `retrain` (evaluation without its Inception weights): the run ends
    FAILED with the error as a tag, and no run of the experiment is left RUNNING."""
    from mlflow import MlflowClient

    from pipelines.retrain_flow import retrain

    client = MlflowClient(mlflow_srv[1])
    missing = tmp_path / "no-inception.pth"
    with pytest.raises(MetagenError, match="no-inception.pth"):
        retrain(str(project), "params.yaml", [*TINY, "eval.extractor=inception", f"eval.inception_weights={missing}"],
                local=True)
    experiment = client.get_experiment_by_name(registry_names(project)[1]).experiment_id
    (failed,) = client.search_runs([experiment], "tags.`metagen.kind` = 'retrain'", order_by=["attributes.start_time DESC"],
                                   max_results=1)
    assert failed.info.status == "FAILED"
    assert "no-inception.pth" in failed.data.tags["metagen.error"]
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")


def test_an_extractor_below_its_floor_stops_the_training(prefect_api: str, mlflow_srv, project: Path) -> None:  # noqa: ANN001
    """Fail fast: the domain extractor, ready beside the training, is below eval.min_extractor_accuracy:
    the training stops there (long before its 100,000 steps) and the run fails saying what to set."""
    from pipelines.retrain_flow import retrain

    with pytest.raises(MetagenError, match=r"held-out accuracy [0-9.]+ is below eval.min_extractor_accuracy 0.999.*"
                                           r"eval.feature_steps.*\(training stopped at meta-step \d+\)") as failed:
        retrain(str(project), "params.yaml", [*TINY, "eval.feature_steps=1", "eval.min_extractor_accuracy=0.999",
                                              "train.steps=100000", "train.checkpoint_every=100000",
                                              "train.val_every=100000", "train.report_every=100"], local=True)
    assert int(str(failed.value).rsplit("meta-step ", 1)[1].rstrip(")")) < 100000


def test_standalone_train_records_the_data_version(prefect_api: str, mlflow_srv, project: Path) -> None:  # noqa: ANN001
    """`metagen train` alone (not inside `retrain`) tags its run with the data version DVC holds."""
    from mlflow import MlflowClient

    from pipelines.ingest_flow import ingest
    from pipelines.train_flow import train

    data = ingest(str(project), "params.yaml", TINY)
    out = train(str(project), "params.yaml", TINY, local=True)
    run = MlflowClient(mlflow_srv[1]).get_run(out["run_id"])
    assert run.data.tags["data.raw_md5"] == data["raw_md5"]
    assert run.data.tags["data.prepared_md5"] == data["prepared_md5"]
    assert run.inputs.dataset_inputs[0].dataset.digest == data["raw_md5"]


def test_ingest_at_the_path_of_a_deleted_clone_rebuilds_the_data(prefect_api: str, project: Path) -> None:
    """The same inputs as an earlier ingest (a fresh clone where a deleted one was) but no data on
    disk: the ingest task runs instead of answering from Prefect's cache."""
    import shutil

    from pipelines.ingest_flow import ingest

    ingest(str(project), "params.yaml", TINY)
    assert (project / "prepared" / "manifest.json").is_file()
    for gone in ("data", "prepared"):
        shutil.rmtree(project / gone)
    for gone in ("data.dvc", "dvc.lock"):
        (project / gone).unlink(missing_ok=True)
    ingest(str(project), "params.yaml", TINY)
    assert (project / "prepared" / "manifest.json").is_file()


def test_a_cached_ingest_reports_the_commit_checked_out_now(prefect_api: str, project: Path) -> None:
    """Prefect's cached ingest result is keyed on the data, not on git: at the same path and data
    but another commit (a re-created project, or new code) it named the commit of the run that
    cached it, so the scheduled run compared a stale commit with the champion's."""
    import subprocess

    from pipelines.ingest_flow import ingest

    ingest(str(project), "params.yaml", TINY)
    ingest(str(project), "params.yaml", TINY)  # with the data present: the result Prefect caches
    (project / "NOTES.md").write_text("another commit\n")
    subprocess.run(["git", "add", "NOTES.md"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "notes"], cwd=project, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, check=True, capture_output=True,
                          text=True).stdout.strip()
    again = ingest(str(project), "params.yaml", TINY)  # answered from the cache
    assert not again["data_changed"]
    assert again["git_commit"] == head and again["git_dirty"] is False
