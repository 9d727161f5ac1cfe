"""Bad configuration through the real `metagen` command: a clear message and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT
from tests.servers import free_port

METAGEN = str(Path(sys.executable).parent / "metagen")


def metagen(*args: str, cwd: Path = PROJECT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([METAGEN, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_wrong_type_in_params_file(tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["meta"]["inner_steps"] = "three"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = metagen("train", "--local", "--params", str(tmp_path / "params.yaml"))
    assert res.returncode == 2
    assert "meta.inner_steps" in res.stdout and "'three'" in res.stdout
    assert len(res.stdout.strip().splitlines()) == 1, res.stdout  # one line: file, key, value


def test_every_error_of_a_params_file_on_one_line(tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["meta"]["inner_steps"] = "three"
    raw["train"]["steps"] = -5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = metagen("train", "--local", "--params", str(tmp_path / "params.yaml"))
    assert res.returncode == 2
    (line,) = res.stdout.strip().splitlines()
    assert str(tmp_path / "params.yaml") in line and "meta.inner_steps" in line and "train.steps" in line


def test_bad_set_override() -> None:
    res = metagen("train", "--local", "--set", "meta.inner_lr=-1")
    assert res.returncode == 2 and "meta.inner_lr: must be > 0, got -1" in res.stdout
    assert "invalid --set override (meta.inner_lr=-1)" in res.stdout  # not "invalid params.yaml"
    assert len(res.stdout.strip().splitlines()) == 1, res.stdout


def test_unreachable_prefect_api() -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    res = metagen("evaluate", env={"PREFECT_API_URL": url})
    assert res.returncode == 2 and f"Prefect API (PREFECT_API_URL) unreachable at {url}" in res.stdout


def test_unreachable_mlflow_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    res = metagen("promote", env={"MLFLOW_TRACKING_URI": url, "PREFECT_API_URL": ""})
    assert res.returncode == 2 and f"MLflow tracking server (MLFLOW_TRACKING_URI) unreachable at {url}" in res.stdout


@pytest.mark.slow
def test_unreachable_ray_cluster(tmp_path: Path) -> None:
    from components.errors import MetagenError
    from components.training import init_ray
    from tests.conftest import make_params

    import ray

    from tests.fixtures import shared_ray_address

    # init_ray keeps a connected Ray: disconnect, then reconnect to the session's cluster (if any)
    connected = shared_ray_address() if ray.is_initialized() else None
    ray.shutdown()
    address = f"127.0.0.1:{free_port()}"
    try:
        with pytest.raises(MetagenError, match=f"cannot reach the Ray cluster at '{address}'"):
            init_ray(make_params(f"train.ray_address={address}").train)
    finally:
        if connected:
            ray.init(address=connected, log_to_driver=False)


def test_dead_ray_address_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """The pre-flight probes RAY_ADDRESS like the MLflow and Prefect servers: one line, in seconds,
    and no MLflow run is created (the tracking store stays empty)."""
    address = f"127.0.0.1:{free_port()}"
    store = tmp_path / "mlflow.db"
    res = metagen("train", env={"RAY_ADDRESS": address, "PREFECT_API_URL": "",
                                "MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert res.returncode == 2
    assert f"cannot reach the Ray cluster at '{address}'" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert not store.exists()


def test_an_error_inside_a_flow_is_one_line_without_tracebacks(tmp_path: Path) -> None:
    """A MetagenError raised inside a Prefect flow: Prefect's logs keep its line but not its
    traceback (unless --verbose), the CLI ends with one `error:` line and exit 2."""
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    env = {"PREFECT_API_URL": "", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    res = metagen("promote", "--project-dir", str(tmp_path), env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 2
    assert "error:" in res.stdout and "eval.json not found" in res.stdout and "metagen evaluate" in res.stdout
    # no traceback of that error (Prefect may print unrelated ones of its own, e.g. about events)
    assert "components.errors.MetagenError" not in out and "raise MetagenError" not in out


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_float_params_are_refused(value: str) -> None:
    """`--set meta.inner_lr=.inf` trained on NaN losses and exited 0: refused, naming the key."""
    res = metagen("train", "--local", "--set", f"meta.inner_lr={value}")
    assert res.returncode == 2 and "meta.inner_lr" in res.stdout and "finite" in res.stdout.lower()


@pytest.mark.parametrize(("args", "expected"), [
    ((), "Usage: metagen"),                                       # bare: the help, no traceback
    (("foo",), "No such command 'foo'"),
    (("train", "--no-such-option"), "No such option: --no-such-option"),
    (("generate",), "Missing option '--support'"),
    (("generate", "--support", ".", "--n", "abc"), "Invalid value for '--n': Input should be a valid integer"),
    (("generate", "--support", ".", "--n", "0"), "Invalid value for '--n': Input should be greater than or equal to 1"),
    (("generate", "--support", ".", "--n", "-3"), "Invalid value for '--n': Input should be greater than or equal to 1"),
    (("generate", "--support", ".", "--n", "100000"), "Invalid value for '--n': Input should be less than or equal to 1024"),
])
def test_usage_errors_are_a_message_not_a_traceback(args: tuple[str, ...], expected: str) -> None:
    res = metagen(*args)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out and "NoArgsIsHelpError" not in out, out
    assert expected in " ".join(out.split()), out


def test_a_second_training_in_the_same_folder_refuses_and_names_the_first(tmp_path: Path) -> None:
    """A scheduled retrain beside a manual one: both would write checkpoints/checkpoint.pt, and one
    result would be lost without a word. The second refuses, naming the run that holds the folder."""
    from components.meta.checkpoint import training_folder

    folder = tmp_path / "checkpoints"
    with training_folder(folder):
        res = metagen("train", "--local", "--params", str(PROJECT / "params.yaml"), "--project-dir", str(tmp_path))
    out = " ".join(res.stdout.split())
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{folder} is in use by another training (pid {os.getpid()}" in out, out
    assert "train.checkpoint_dir" in out and "Traceback" not in res.stdout + res.stderr
    with training_folder(folder):  # released: a later run takes it
        pass


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_and_leaves_nothing_behind(project: Path) -> None:
    """Issue 32: Ctrl-C in `metagen train` took 234 s and printed ~400 lines of connection errors
    (the terminal's SIGINT had stopped Prefect's temporary server too); the interrupted command
    must exit 130, say so, and leave no server, Ray process or empty results folder."""
    import signal
    import time

    from tests.fixtures import TINY

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}  # all local
    env |= {"COLUMNS": "200", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    sets = sum((["--set", o] for o in TINY), [])
    subprocess.run([METAGEN, "ingest", *sets], cwd=project, env=env, check=True, capture_output=True, timeout=300)
    storage = project / "ray_results"
    proc = subprocess.Popen([METAGEN, "train", *sets, "--set", "train.steps=1000000", "--set", "train.val_every=1000",
                             "--set", "train.checkpoint_every=1000", "--set", "train.checkpoint_dir=interrupted"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group, as a terminal's foreground job
    deadline = time.monotonic() + 240
    while not (storage.is_dir() and any(storage.iterdir())) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(5)  # the workers are training
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Connection refused" not in out and "Traceback" not in out, out
    time.sleep(2)
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left behind: {left}"
    assert not (project / "interrupted").exists()  # nothing was checkpointed: no empty folder
    assert not storage.exists() or list(storage.iterdir()) == []  # nor an empty Ray Train run
