"""The default pipeline (`metagen run`) timed phase by phase, as a new user gets it.

Each variant runs in a fresh `git clone` of this repository's HEAD (no data, no caches, no MLflow
store: what `make run` finds after `make setup`), with this venv's Python, and prints the
breakdown of ``reports/timings.json`` plus the command's wall time, as JSON:

* ``default``: params.yaml as committed (evaluation spread over the local Ray, references scored
  while the meta-model trains);
* ``in-process`` (``--compare``): ``eval.distributed=false``, what a user without Ray would run;
* ``rerun``: `metagen run` again in the first clone (the extractor, the `pretrain` model and the
  references' scores cached by digest).

    python benchmarks/pipeline.py [--compare] [--no-rerun]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _clone(dst: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], check=True)
    return dst


def _run(project: Path, overrides: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", *(a for o in overrides for a in ("--set", o))]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    timings = json.loads((project / "reports" / "timings.json").read_text())
    top = {name: entry["seconds"] for name, entry in timings["phases"].items() if "/" not in name}
    return {"wall_s": round(wall, 1), "total_s": timings["total_s"], "overhead_s": timings["overhead_s"],
            "top_level_phases_s": top, "timings": timings}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", action="store_true", help="also run with eval.distributed=false")
    ap.add_argument("--no-rerun", action="store_true", help="skip the second run in the same clone")
    args = ap.parse_args()
    out: dict[str, Any] = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                    capture_output=True, text=True).stdout.strip()}
    with tempfile.TemporaryDirectory(prefix="metagen-bench-") as tmp:
        first = _clone(Path(tmp) / "default")
        out["default"] = _run(first, [])
        if not args.no_rerun:
            out["rerun"] = _run(first, [])
        if args.compare:
            out["in-process"] = _run(_clone(Path(tmp) / "in-process"), ["eval.distributed=false"])
    if "in-process" in out:
        out["speedup_vs_in_process"] = round(out["in-process"]["wall_s"] / out["default"]["wall_s"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
