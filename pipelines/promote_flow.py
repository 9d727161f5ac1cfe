"""Flow `promote`: register the trained generator and apply the FID gate to the `champion` alias."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task

from components.errors import MetagenError
from components.meta.adaptation import AdaptationRule
from components.params import Params
from components.evaluation.bootstrap import load_units
from components.evaluation.evaluate import UNITS_FILE
from components.gate import GateRules
from components.model_card import model_card
from components.registry import (champion_units, promote as apply_gate, publish_model_card, register_checkpoint,
                                 registered_facts)
from components.timing import phase
from components.tracking import configure, mlflow_step, tracked_run
from pipelines.approval_flow import approval
from pipelines.common import resolve, retry_unless_user_error, run_name


@task(name="register-model", retries=2, retry_delay_seconds=3,
      retry_condition_fn=retry_unless_user_error)
def register_model(root: str, params: Params, run_id: str, checkpoint: str, tags: dict[str, str],
                   rule: AdaptationRule) -> str:
    with mlflow_step("registering the model"):
        configure(params.registry, Path(root))
        return register_checkpoint(run_id, Path(checkpoint), params, Path(root) / params.data.prepared_dir, tags, rule)


@task(name="promotion-gate", retries=2, retry_delay_seconds=3,
      retry_condition_fn=retry_unless_user_error)
def gate(root: str, params: Params, version: str, report: dict[str, Any]) -> dict[str, Any]:
    base = Path(root)
    name = params.registry.model_name
    units = load_units(base / params.eval.reports_dir / UNITS_FILE)
    digests = (report["extractor"]["digest"], report["protocol"]["digest"])
    if (units.extractor, units.protocol) != digests:
        raise MetagenError(f"{base / params.eval.reports_dir / UNITS_FILE} is not from the evaluation in eval.json "
                           "(other digests); run `metagen evaluate` again")
    with mlflow_step("applying the promotion gate"):
        configure(params.registry, base)
        decision = apply_gate(name, version, report, units, GateRules.from_params(params.registry, params.eval),
                              lambda v: champion_units(name, v, params, base, *digests))
    return decision.__dict__


@task(name="model-card", retries=2, retry_delay_seconds=3, retry_condition_fn=retry_unless_user_error)
def write_model_card(root: str, params: Params, version: str, run_id: str, report: dict[str, Any],
                     decision: dict[str, Any], tags: dict[str, str]) -> None:
    name = params.registry.model_name
    with mlflow_step("writing the model card"):
        configure(params.registry, Path(root))
        card = model_card(name, version, report, decision, tags, registered_facts(name, version), run_id)
        publish_model_card(name, version, card)


def version_tags(report: dict[str, Any], tags: dict[str, str] | None) -> dict[str, str]:
    """The registered version's tags: lineage plus what the evaluation compared it on."""
    return {**(tags or {}), "eval.extractor_digest": report["extractor"]["digest"],
            "eval.protocol_digest": report["protocol"]["digest"],
            "eval.extractor_heldout_accuracy": str(report["extractor"].get("heldout_accuracy")),
            **{f"eval.{r['model']}.{r['sampling']}.fid": f"{r['fid_mean']:.4f}" for r in report["rows"]}}


@flow(name="promote", log_prints=True, flow_run_name=run_name("promote"))
def promote(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
            run_id: str | None = None, checkpoint: str = "", report: dict[str, Any] | None = None,
            tags: dict[str, str] | None = None, params: Params | None = None) -> dict[str, Any]:
    """Register ``checkpoint`` (logged on ``run_id``) and gate it on ``report`` (an eval.json)."""
    base, params = resolve(root, params_path, overrides, params)
    checkpoint = checkpoint or str(base / params.train.checkpoint_dir / "checkpoint.pt")
    if report is None:
        path = base / params.eval.reports_dir / "eval.json"
        if not path.is_file():
            raise MetagenError(f"{path} not found: `metagen promote` gates on the evaluation's report; "
                               "run `metagen evaluate` first (or `metagen run`)")
        report = json.loads(path.read_text())
    with tracked_run(params, base, "promote", run_id or None, extra_tags={"train.checkpoint": checkpoint}) as run_id:
        with phase("register model", "overhead"):
            version = register_model(str(base), params, run_id, checkpoint, version_tags(report, tags),
                                     AdaptationRule.from_dict(report["adaptation"]))
        with phase("gate"):
            decision = gate(str(base), params, version, report)
        with phase("model card", "overhead"):
            write_model_card(str(base), params, version, run_id, report, decision, version_tags(report, tags))
    wait = params.registry.approval_wait_s
    if decision["decision"] == "awaiting approval" and wait > 0:
        print(f"model {params.registry.model_name} v{version} passed the gate and awaits approval: resume the paused "
              f"`approve-v{version}` flow run in the Prefect UI within {wait} s (or later: `metagen approve {version}`)")
        state = approval(str(base), params, version, wait, return_state=True)
        if state.is_completed():
            decision = {**decision, **state.result()}
        else:
            print(f"no answer within {wait} s: v{version} keeps waiting for `metagen approve {version}`")
    print(f"model {params.registry.model_name} v{version}: {decision['decision']} ({decision['reason']})")
    return decision
