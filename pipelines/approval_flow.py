"""Flow `approval`: a version that passed the gate with ``registry.require_approval`` waits, paused,
for a person's answer in the Prefect UI (the flow run's Resume form: approve or not, and why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from components.approval import approve, reject
from components.params import Params
from components.tracking import configure


class Approval(RunInput):
    approve: bool = Field(description="true: this version may become champion; false: it stays out")
    reason: str = Field(default="", description="why (kept in the registry's audit trail; required to reject)")


@flow(name="approval", log_prints=True, flow_run_name="approve-v{version}")
def approval(root: str, params: Params, version: str, wait_s: int, poll_s: int = 10) -> dict[str, Any]:
    """Pause until a person answers (at most ``wait_s``: then this run fails and the version keeps
    waiting for `metagen approve`); the answer goes through :mod:`components.approval`."""
    name = params.registry.model_name
    form = Approval.with_initial_data(
        description=f"{name} v{version} passed the promotion gate (its model card is the version's description "
                    "in MLflow). Approve it to let it become champion, or reject it with a reason.")
    answer = pause_flow_run(wait_for_input=form, timeout=wait_s, poll_interval=max(1, min(poll_s, wait_s)))
    configure(params.registry, Path(root))
    why = f"in the Prefect UI: {answer.reason}" if answer.reason else "in the Prefect UI"
    if answer.approve:
        champion = approve(name, version, why)
        decision = "promoted" if champion == version else f"approved, not champion (v{champion} has the lower FID)"
    else:
        reject(name, version, why)
        decision = "rejected by a person"
    print(f"model {name} v{version}: {decision} ({why})")
    return {"decision": decision, "reason": why}
