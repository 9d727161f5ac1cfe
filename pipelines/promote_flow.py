"""Flow `promote`: register the trained generator and apply the FID gate to the `champion` alias."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from pipelines.common import load


@task(name="register-model", retries=2, retry_delay_seconds=3)
def register_model(root: str, params_json: dict[str, Any], run_id: str, checkpoint: str,
                   tags: dict[str, str]) -> str:
    from pathlib import Path

    from components.params import validate_params
    from components.registry import register_checkpoint
    from components.tracking import configure

    params = validate_params(params_json)
    configure(params, Path(root))
    return register_checkpoint(run_id, Path(checkpoint), params, Path(root) / params.data.prepared_dir, tags)


@task(name="promotion-gate", retries=2, retry_delay_seconds=3)
def gate(root: str, params_json: dict[str, Any], version: str, report: dict[str, Any]) -> dict[str, Any]:
    from pathlib import Path

    from components.params import validate_params
    from components.registry import GateRules, promote, score_registered
    from components.tracking import configure

    params, base = validate_params(params_json), Path(root)
    configure(params, base)
    name = params.registry.model_name
    decision = promote(name, version, report, GateRules.from_params(params),
                       reevaluate=lambda v: score_registered(f"models:/{name}/{v}", params, base))
    return decision.__dict__


@flow(name="promote", log_prints=True)
def promote(root: str = ".", params_path: str = "params.yaml", overrides: list[str] | None = None,
            run_id: str = "", checkpoint: str = "", report: dict[str, Any] | None = None,
            tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Register ``checkpoint`` (logged on ``run_id``) and gate it on ``report`` (an eval.json)."""
    import json

    from components.tracking import finish_run, start_run

    base, params = load(root, params_path, overrides)
    checkpoint = checkpoint or str(base / params.train.checkpoint_dir / "checkpoint.pt")
    own = not run_id
    if own:
        run_id = start_run(params, base, "promote", extra_tags={"train.checkpoint": checkpoint})
    report = report or json.loads((base / params.eval.reports_dir / "eval.json").read_text())
    tags = {**(tags or {}), "eval.extractor_digest": report["extractor"]["digest"],
            "eval.protocol_digest": report["protocol"]["digest"],
            "eval.extractor_heldout_accuracy": str(report["extractor"].get("heldout_accuracy")),
            **{f"eval.{r['model']}.{r['sampling']}.fid": f"{r['fid_mean']:.4f}" for r in report["rows"]}}
    version = register_model(str(base), params.model_dump(mode="json"), run_id, checkpoint, tags)
    decision = gate(str(base), params.model_dump(mode="json"), version, report)
    if own:
        finish_run(run_id)
    print(f"model {params.registry.model_name} v{version}: {decision['decision']} ({decision['reason']})")
    return decision
