"""The audit trail of the registry's aliases: every move of ``champion`` (from which version to
which, the decision, its reason, the user, the time, the MLflow run), kept in the registry itself
as tags of the registered model, since MLflow keeps no history of aliases. Shown by ``metagen history``.
"""

from __future__ import annotations

import getpass
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

PREFIX = "audit."
MAX_REASON = 3000  # a tag value holds 5,000 characters; the rest of the record fits in the remainder


@dataclass(frozen=True)
class Move:
    time: str          # UTC, ISO 8601
    alias: str
    before: str | None  # version numbers
    after: str | None
    decision: str      # promoted | rollback | ...
    reason: str
    user: str
    run_id: str | None


def current_user() -> str:
    """Who moves the alias: the registry user the client authenticates as, else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def record_move(client: Any, name: str, alias: str, before: str | None, after: str | None, decision: str,
                reason: str, run_id: str | None = None) -> Move:
    now = time.time()
    move = Move(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z", alias, before,
                after, decision, reason[:MAX_REASON], current_user(), run_id)
    key = f"{PREFIX}{move.time.replace(':', '').replace('-', '')}.{uuid.uuid4().hex[:6]}"  # sorts by time, never collides
    client.set_registered_model_tag(name, key, json.dumps(asdict(move), sort_keys=True))
    return move


def history(client: Any, name: str) -> list[Move]:
    """Every recorded move of ``name``'s aliases, oldest first."""
    tags = client.get_registered_model(name).tags
    return [Move(**json.loads(tags[k])) for k in sorted(tags) if k.startswith(PREFIX)]
