"""The committed DVC state is current: code and params a stage depends on match dvc.lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT

DVC = str(Path(sys.executable).with_name("dvc"))


def test_the_committed_dvc_lock_is_current() -> None:
    """A stage whose code or params changed without `dvc.lock` makes a fresh clone's `make run`
    rewrite the lock (and retrain the extractor), and tags every run `git.dirty`. The data and the
    stages' outputs are not in a fresh clone: their absence is not a change."""
    out = subprocess.run([DVC, "status", "--json"], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"}, check=True)
    stale = []
    for stage, entries in json.loads(out.stdout or "{}").items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for path, what in entry.get("changed deps", {}).items():
                if isinstance(what, dict):  # a params file: {key: new | modified | deleted}
                    stale.append(f"{stage}: {path} {what}")
                elif what == "modified" and path.startswith(("components", "pipelines")):
                    stale.append(f"{stage}: {path} modified")
    assert not stale, ("dvc.lock is stale; run `dvc repro` (or `dvc commit`) and commit dvc.lock: "
                       + "; ".join(stale))
