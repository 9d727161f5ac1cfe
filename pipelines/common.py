"""What every flow does first: take the params validated once by its caller (the CLI, the parent
flow), or validate params.yaml when it is the entry point itself (a Prefect deployment)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.data.lineage import raw_md5
from components.errors import MetagenError, ServerUnreachable
from components.params import Params, load_params
from components.timing import TIMINGS, write as write_timings


def resolve(root: str, params_path: str, overrides: list[str] | None, params: Params | None) -> tuple[Path, Params]:
    base = Path(root).resolve()
    if params is not None:
        return base, params
    path = Path(params_path)
    return base, load_params(path if path.is_absolute() else base / path, overrides or [])


def run_name(kind: str) -> Callable[[], str]:
    """A Prefect flow-run name that says what ran and when: ``<kind>-<data md5 prefix>-<time>``
    (the data version committed in ``data.dvc``; ``new`` before the first ingest)."""

    def name() -> str:
        from prefect.runtime import flow_run

        root = Path(str(flow_run.parameters.get("root", "."))).resolve()
        return f"{kind}-{(raw_md5(root) or 'new')[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"

    return name


def retry_unless_user_error(task: object, task_run: object, state: object) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures (an unreachable server, an
    unexpected error), never a :class:`MetagenError` the user must fix first (bad input)."""
    exc = state.result(raise_on_failure=False)  # type: ignore[attr-defined]
    return isinstance(exc, ServerUnreachable) or not isinstance(exc, MetagenError)


def rename_flow_run(kind: str, data_md5: str | None) -> str:
    """Name the current flow run after the data version it turned out to read (known after ingest)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    name = f"{kind}-{(data_md5 or 'new')[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name)
    return name


def start_timings() -> None:
    """At a top-level flow's start: the clock the CLI started (its imports, the Prefect server's
    start-up), or this flow's own when something else called it (a deployment, a test)."""
    if "flow call" not in TIMINGS.marks:
        TIMINGS.clear()
        TIMINGS.mark("process")
    TIMINGS.add_since("flow call", "prefect start-up", "overhead")


def finish_timings(base: Path, params: Params, run_id: str) -> tuple[dict[str, Any], Path]:
    """The phases' times to ``reports/timings.json`` and the MLflow run (``timing.*``)."""
    from components.tracking import log_timings

    summary = TIMINGS.summary(total_s=TIMINGS.elapsed("process"))
    TIMINGS.clear()
    path = write_timings(base / params.eval.reports_dir / "timings.json", summary)
    log_timings(run_id, summary, path)
    return summary, path


def publish_artifacts(markdown: str, links: dict[str, tuple[str, str]]) -> None:
    """The flow run's Prefect artifacts: a markdown report and links (``key: (url, text)``)."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key="metagen-report", description="evaluation and gate decision")
    for key, (url, text) in links.items():
        create_link_artifact(link=url, link_text=text, key=key)
