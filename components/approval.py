"""Promotion by a person (``registry.require_approval``): a version that passed the gate waits,
tagged ``approval.status=pending``; ``metagen approve N`` makes it eligible and moves ``champion``
through the gate's own reconcile, ``--reject`` records why it stays out. Both are in the audit trail.
"""

from __future__ import annotations

from components.audit import current_user, record_move
from components.errors import MetagenError
from components.registry import APPROVAL, CHAMPION, alias_version, eligible_key, reconcile, retry_write


def _pending(client: object, name: str, version: str) -> dict[str, str]:
    tags = client.get_model_version(name, version).tags  # type: ignore[attr-defined]
    if tags.get(APPROVAL) != "pending":
        raise MetagenError(f"model {name} v{version} is not awaiting approval (approval: {tags.get(APPROVAL, 'none')}, "
                           f"gate: {tags.get('gate.decision', 'not gated')})")
    return tags


def approve(name: str, version: str, reason: str) -> str | None:
    """Approve a pending version; returns the champion after (the approved version, unless an
    eligible one with a lower FID holds it)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        tags = _pending(client, name, version)
        who = f"approved by {current_user()}" + (f": {reason}" if reason else "")
        retry_write(client.set_model_version_tag, name, version, APPROVAL, "approved")
        retry_write(client.set_model_version_tag, name, version, "approval.reason", who[:5000])
        retry_write(client.set_model_version_tag, name, version, eligible_key(tags["gate.key"]), "true")
        after = reconcile(client, name, tags["gate.key"], f"{who}; {tags.get('gate.reason', '')}",
                          client.get_model_version(name, version).run_id)
        retry_write(client.set_model_version_tag, name, version, "gate.decision",
               "promoted" if after == version else f"approved, not champion (v{after} has the lower FID)")
        return after
    except MlflowException as err:
        raise MetagenError(f"cannot approve {name} v{version}: {err.message}") from None


def reject(name: str, version: str, reason: str) -> None:
    """Keep a pending version out, and why."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not reason:
        raise MetagenError("a rejection needs its reason: --reason TEXT")
    client = MlflowClient()
    try:
        _pending(client, name, version)
        retry_write(client.set_model_version_tag, name, version, APPROVAL, "rejected")
        retry_write(client.set_model_version_tag, name, version, "approval.reason", reason[:5000])
        retry_write(client.set_model_version_tag, name, version, "gate.decision", "rejected by a person")
        champion = alias_version(client, name, CHAMPION)
        record_move(client, name, CHAMPION, champion, champion, f"v{version} not approved", reason)
    except MlflowException as err:
        raise MetagenError(f"cannot reject {name} v{version}: {err.message}") from None
