"""Which servers a run talks to, and reachability probes with the server named in the error, so
that nothing hangs on a dead URL. Light on purpose (no torch, MLflow, Ray or Prefect imports): the
CLI probes every server before it imports the flows."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from components.errors import MetagenError, ServerUnreachable

if TYPE_CHECKING:
    from components.params import RegistryParams, TrainParams


def check_health(url: str, what: str, timeout: float = 5.0) -> None:
    """GET ``<url>/health``; a :class:`MetagenError` naming ``what`` and ``url`` if it does not answer 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise MetagenError(f"{what} at {url} answered /health with HTTP {resp.status}")
    except (urllib.error.URLError, OSError) as err:
        raise ServerUnreachable(f"{what} unreachable at {url}: {err}") from None


def tracking_uri(registry: RegistryParams, root: Path) -> str:
    """The MLflow store: ``registry.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else SQLite in the project."""
    return registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with the URI in the message, when an MLflow server does not answer."""
    if uri.startswith(("http://", "https://")):
        check_health(uri, "MLflow tracking server (MLFLOW_TRACKING_URI)", timeout)


def ray_address(train: TrainParams) -> str | None:
    """The Ray cluster: ``RAY_ADDRESS``, else ``train.ray_address``; None: a local Ray."""
    return os.environ.get("RAY_ADDRESS") or train.ray_address


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """A TCP probe of ``host:port`` (or ``ray://host:port``) so that a dead cluster fails in
    seconds instead of ray.init's minutes of retries."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MetagenError(f"RAY_ADDRESS / train.ray_address: expected host:port or ray://host:port, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ServerUnreachable(f"cannot reach the Ray cluster at {address!r} (RAY_ADDRESS / train.ray_address): {err}") from None
