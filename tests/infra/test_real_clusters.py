"""Production-shaped backends on this machine: a `ray start` cluster of two processes that
`metagen train` reaches through RAY_ADDRESS, and an MLflow server on a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent


def _stop_processes_mentioning(*needles: str) -> None:
    """Stop this cluster's processes (and their children: the agents) and nothing else: ``ray stop``
    would also kill the local Ray of a test running beside this one (pytest-xdist)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(n in cmdline for n in needles) and proc.pid != os.getpid():
            found[proc.pid] = proc
            try:
                found.update((c.pid, c) for c in proc.children(recursive=True))
            except psutil.Error:
                pass
    for proc in found.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    # the raylet and the agents leave on SIGTERM; Ray's GCS server and its monitor do not (measured:
    # still alive after 12 s), and this cluster's state is thrown away: a short grace, then SIGKILL
    _, alive = psutil.wait_procs(list(found.values()), timeout=2)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture
def ray_start_cluster(tmp_path: Path) -> Iterator[str]:
    """Two `ray start` processes (head and worker, one CPU each) on ports of their own, in a temp
    dir of their own, stopped by those marks."""
    import tempfile

    port, dashboard, client = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=1",
                        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                        f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=180)
        failures = []
        for _ in range(2):  # the join failed at set-up twice in ~10 full runs, never alone: one more try
            joined = subprocess.run([str(BIN / "ray"), "start", f"--address={address}", "--num-cpus=1",
                                     "--node-ip-address=127.0.0.1"],
                                    env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=180)
            if joined.returncode == 0:
                break
            failures.append(f"{joined.stdout[-1500:]} {joined.stderr[-1500:]}")
            time.sleep(3)
        assert joined.returncode == 0, "the worker node did not join: " + " | ".join(failures)
        if failures:
            warnings.warn(f"the worker node joined at the second try; the first: {failures[0]}", stacklevel=1)
        yield address
    finally:
        _stop_processes_mentioning(temp_dir, f"--port={client} ")
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_metagen_train_on_a_two_process_ray_cluster(ray_start_cluster: str, prefect_api: str, project: Path,
                                                    tmp_path: Path) -> None:
    from components.training import worker_summaries
    from tests.fixtures import TINY

    env = {**os.environ, "RAY_ADDRESS": ray_start_cluster, "RAY_AUTH_MODE": "token", "COLUMNS": "200",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    subprocess.run([str(BIN / "metagen"), "ingest", *sum((["--set", o] for o in TINY), [])], cwd=project, env=env,
                   check=True, capture_output=True, timeout=300)
    sets = sum((["--set", o] for o in [*TINY, "train.num_workers=2", f"train.storage_path={tmp_path / 'ray'}"]), [])
    res = subprocess.run([str(BIN / "metagen"), "train", *sets], cwd=project, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = [p for p in (tmp_path / "ray").iterdir() if (p / "workers").is_dir()]
    assert len(runs) == 1
    summaries = worker_summaries(runs[0])
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    assert len({s["node_id"] for s in summaries}) == 2  # both nodes ran a worker
    assert (project / "checkpoints" / "checkpoint.pt").is_file()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1, run as the `postgres` user when we are root."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql when it can)")
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="metagen-pg-"))  # outside pytest's 0700 tree: `postgres` must enter it
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(data / "log"), "-w", "-o",
                    f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data}", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def test_registry_path_on_mlflow_with_postgresql(postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    from components.gate import GateRules
    from tests.pipelines.test_registry import _new_versions, gate

    server, url = mlflow_server(tmp_path / "mlflow", backend_uri=postgres)
    server.start(timeout=120)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        mlflow.set_registry_uri(url)
        client = MlflowClient(url, url)
        v1, v2 = _new_versions(client, "pg-model", 2)
        rules = GateRules(sampling="prior", fid_threshold=10.0, max_copy_rate=0.1, require_beats_baselines=True, bootstrap_samples=100)
        assert gate("pg-model", v1, 6.0, rules).decision == "promoted"
        assert gate("pg-model", v2, 5.0, rules).decision == "promoted"
        assert str(client.get_model_version_by_alias("pg-model", "champion").version) == v2
        assert str(client.get_model_version_by_alias("pg-model", "previous").version) == v1
    finally:
        server.stop()
    import psycopg

    with psycopg.connect(postgres) as conn:
        rows = conn.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = 'pg-model' ORDER BY alias").fetchall()
    assert rows == [("champion", int(v2)), ("previous", int(v1))]  # it really is in PostgreSQL
