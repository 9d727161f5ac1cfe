"""Real servers for tests, on 127.0.0.1: an `mlflow server` and a `prefect server` process."""

from __future__ import annotations

import os
import signal
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class Server:
    def __init__(self, cmd: list[str], health: str, env: dict[str, str], log: Path) -> None:
        self.cmd, self.health, self.env, self.log = cmd, health, env, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Server:
        fh = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_http(self.health, timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None


def mlflow_server(root: Path, backend_uri: str | None = None, admin_password: str | None = None) -> tuple[Server, str]:
    """A real `mlflow server`; with ``admin_password``, guarded by MLflow's basic-auth app (users
    in a SQLite file under ``root``, no permission unless granted, admin ``admin``)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    backend = backend_uri or f"sqlite:///{root / 'mlflow.db'}"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination",
           str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if admin_password is not None:
        ini = root / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                       f"database_uri = sqlite:///{root / 'basic_auth.db'}\nadmin_username = admin\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                       "auth_cache_ttl_seconds = 60\n")  # as infra/mlflow: a PBKDF2 check per request is ~0.5 s here
        cmd += ["--app-name", "basic-auth"]
        env.update({"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
    return Server(cmd, f"{url}/health", env, root / "mlflow-server.log"), url


def prefect_server(root: Path) -> tuple[Server, str]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = {"PREFECT_HOME": str(root), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_API_URL": ""}
    api = f"http://127.0.0.1:{port}/api"
    return Server(cmd, f"{api}/health", env, root / "prefect-server.log"), api
