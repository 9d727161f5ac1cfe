"""Fixtures with real servers: a session Prefect server, a session MLflow server (and one of a
test's own for the tests that stop it), a temp project repo (registered as a pytest plugin by
tests/conftest.py).

The shared MLflow server keeps the tests apart by name: every ``project`` registers under a model
name and an experiment of its own (``registry_names``), and the registry tests name their models
after the test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT
from tests.servers import Server, mlflow_server, prefect_server

TINY = [  # on scikit-learn's digits (10 classes, 1,797 8x8 images): the fastest real data
    "data.source=digits", "model.width=16", "meta.k_query=5", "meta.meta_batch_size=2", "train.steps=6", "train.val_every=3",
    "train.report_every=3", "train.checkpoint_every=3", "train.val_tasks=2", "train.pretrain_steps=10",
    "eval.repeats=1", "eval.samples_per_class=16", "eval.kid_subsets=3", "eval.kid_subset_size=16",
    "eval.augment_steps=10", "eval.finetune_lrs=[0.0, 0.001]", "eval.finetune_steps=2", "eval.scratch_steps=3",
    "eval.feature_steps=30", "eval.adapt_steps=2", "eval.min_extractor_accuracy=0", "eval.nll_samples=4", "eval.nll_choice_samples=4",
    "eval.bootstrap_samples=200",
]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real `prefect server` for the session; PREFECT_API_URL points every flow (and child) at it."""
    server, api = prefect_server(tmp_path_factory.mktemp("prefect"))
    server.start(timeout=120)
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api
    yield api
    if old is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = old
    server.stop()


_SHARED_RAY: list[str] = []  # the address of the session's ray_cluster while it runs


def shared_ray_address() -> str | None:
    """The session's 2-node Ray cluster's address, if it has been started (``ray_cluster``)."""
    return _SHARED_RAY[0] if _SHARED_RAY else None


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """One real 2-node Ray cluster for the session (``ray.cluster_utils.Cluster``: a head and a
    second node, their own raylets, one CPU each: the 2 CPUs a local Ray has here), this process
    connected to it. The multi-node, Ray Train and Ray Tune tests share it, and the in-process flows
    that run after them find Ray connected (``init_ray`` reuses it) instead of starting their own:
    each start of a Ray costs 6-9 s of the suite. Train's controller polls its workers every 0.5 s
    (the killed-worker test), and waits up to 600 s for a worker group's CPUs, both set before the
    nodes start so that their processes inherit them."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    # a worker group waits for the CPUs the previous test's actors free: on a loaded machine that
    # took over Ray's 60 s, and a Tune trial failed with WorkerGroupStartupTimeoutError
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    _SHARED_RAY.append(cluster.address)
    yield cluster
    _SHARED_RAY.clear()
    ray.shutdown()
    cluster.shutdown()


def _point_mlflow_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture(scope="session")
def mlflow_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """One real `mlflow server` for the session (each start costs ~8 s of the suite)."""
    server, url = mlflow_server(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server, url
    server.stop()


@pytest.fixture
def mlflow_srv(mlflow_shared: tuple[Server, str], monkeypatch: pytest.MonkeyPatch) -> tuple[Server, str]:
    """The session's MLflow server, MLFLOW_TRACKING_URI pointing at it. Never stop it: a test that
    takes a server down uses ``mlflow_own``."""
    _point_mlflow_at(mlflow_shared[1], monkeypatch)
    return mlflow_shared


@pytest.fixture
def mlflow_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, str]]:
    """A real `mlflow server` of this test's own, which it may stop and start."""
    server, url = mlflow_server(tmp_path / "mlflow")
    server.start()
    _point_mlflow_at(url, monkeypatch)
    yield server, url
    server.stop()


def registry_names(project: Path) -> tuple[str, str]:
    """The registered model name and the experiment the ``project``'s params name."""
    from components.params import load_params

    registry = load_params(project / "params.yaml").registry
    return registry.model_name, registry.experiment


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh git + DVC repository with the project's dvc.yaml and params.yaml (the tiny config is
    passed as overrides), so that flows run exactly as in a clone."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, root)
    # the DVC `features` stage reads params.yaml itself (not the flows' overrides): a short one here
    text = (root / "params.yaml").read_text()
    text = re.sub(r"(?m)^(  feature_steps:) \d+", r"\1 30", text)
    text = re.sub(r"(?m)^(  source:) omniglot\b", r"\1 digits", text)  # as TINY: the stage and the flows agree
    # a model and an experiment of this test's own: the tests share one MLflow server
    text = re.sub(r"(?m)^(  (?:model_name|experiment):) metagen\b", rf"\1 metagen-{tmp_path.name}", text)
    assert text.count(f"metagen-{tmp_path.name}") == 2, "params.yaml: registry.model_name/experiment not found"
    (root / "params.yaml").write_text(text)
    for sub in ("components/data", "components/evaluation"):
        shutil.copytree(PROJECT / sub, root / sub, ignore=shutil.ignore_patterns("__pycache__"))
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "t@example.com"], root)
    run(["git", "config", "user.name", "t"], root)
    from dvc.repo import Repo

    Repo.init(str(root)).close()
    run([str(Path(sys.executable).parent / "dvc"), "remote", "add", "-d", "local", str(tmp_path / "dvc-remote")], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "init"], root)
    return root
