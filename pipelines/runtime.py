"""Process-wide settings an entry point applies once: offline switches, logging."""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

from components.errors import MetagenError

OFFLINE_DEFAULTS = {
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TQDM_DISABLE": "1",
    # a tracking server that goes away fails a step in well under a minute, not after MLflow's
    # default 7 retries with exponential backoff and 120 s timeouts
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def apply_offline_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


class HideUserErrorTracebacks(logging.Filter):
    """Prefect logs a failed task or flow with its traceback; for a :class:`MetagenError` (bad
    input, unreachable server: the user acts on its one line) keep the line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MetagenError):
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("dvc", "dvc_data", "dvc_objects", "filelock", "urllib3", "matplotlib", "PIL", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    hide = HideUserErrorTracebacks()
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, HideUserErrorTracebacks)]:
            logger.removeFilter(f)
        if not verbose:
            logger.addFilter(hide)


def check_prefect_api(timeout: float = 5.0) -> None:
    """With PREFECT_API_URL set, fail fast and clearly when that server does not answer."""
    from components.net import check_health

    url = os.environ.get("PREFECT_API_URL")
    if url:  # unset: Prefect starts a temporary local server
        check_health(url, "Prefect API (PREFECT_API_URL)", timeout)


class _OwnSession:
    """``subprocess`` as Prefect's server module sees it, its ``Popen`` starting a new session."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # noqa: N802 (subprocess's name)
        return subprocess.Popen(*args, **{**kwargs, "start_new_session": True})


def detach_temporary_prefect_server() -> None:
    """Start Prefect's temporary local server (no PREFECT_API_URL) in a session of its own.

    Ctrl-C in a terminal signals the whole foreground process group: the server died with the
    command, and the interrupted flow then retried its calls for minutes, printing hundreds of
    connection errors (issue 32). In its own session the server outlives the interrupt, the flow
    run is marked crashed, and Prefect stops the server when the command exits."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api import server

    server.subprocess = _OwnSession()  # type: ignore[assignment]
