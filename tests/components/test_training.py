"""Ray Train (real, local 2-CPU Ray): data-parallel equivalence, a killed worker, Ray Tune with ASHA."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.meta.checkpoint import load_checkpoint
from components.meta.trainer import load_learner, train_local
from components.training import train_distributed, worker_summaries
from tests.conftest import make_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FAST = ["model.width=16", "meta.meta_batch_size=4", "meta.k_query=5", "train.val_tasks=2", "train.num_threads=1"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.shutdown()
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=True)
    yield
    ray.shutdown()


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_workers_equal_one_worker_and_in_process(local_ray: None, tmp_path: Path, digits_prepared: Path) -> None:
    """One loop for both paths: the same steps recorded and validated (val_every=3 is not a
    multiple of report_every=2), the same losses, the same weights."""
    common = [*FAST, "train.steps=6", "train.report_every=2", "train.val_every=3", "train.checkpoint_every=4",
              f"train.storage_path={tmp_path / 'ray'}"]
    one = train_distributed(make_params(*common, "train.num_workers=1"), digits_prepared, tmp_path / "one")
    two = train_distributed(make_params(*common, "train.num_workers=2"), digits_prepared, tmp_path / "two")
    local = train_local(make_params(*common), digits_prepared, tmp_path / "local", progress=False)
    assert [h["step"] for h in local.history] == [h["step"] for h in one.history] == [2, 3, 4, 6]
    assert [h["step"] for h in local.history if "val_loss" in h] == [h["step"] for h in one.history
                                                                      if "val_loss" in h] == [3, 6]
    for a, b in zip(local.history, one.history, strict=True):
        for key in ("train_loss", "val_loss", "val_loss_unadapted"):
            assert (key in a) == (key in b)
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-5, (a["step"], key, a[key], b[key])
    m1 = load_checkpoint(one.checkpoint)["learner"]["model"]
    m2 = load_checkpoint(two.checkpoint)["learner"]["model"]
    m0 = load_checkpoint(local.checkpoint)["learner"]["model"]
    assert _max_diff(m1, m0) <= 1e-6
    assert _max_diff(m1, m2) <= 1e-5
    assert two.step == 6 and {h["world_size"] for h in two.history} == {2.0}


def test_killed_worker_resumes_from_checkpoint(local_ray: None, tmp_path: Path, digits_prepared: Path) -> None:
    params = make_params(*FAST, "train.num_workers=2", "train.steps=16", "train.report_every=2",
                         "train.checkpoint_every=4", "train.val_every=8", "train.fail_at_step=10",
                         "train.max_failures=2", f"train.storage_path={tmp_path / 'ray'}")
    result = train_distributed(params, digits_prepared, tmp_path / "out", name="fault-run")
    run_dir = tmp_path / "ray" / "fault-run"
    assert (run_dir / ".fault_injected").is_file()
    summaries = worker_summaries(run_dir)
    assert len(summaries) == 2  # only the restarted group finished; the killed one left no summary
    resumed = {s["resumed_from"] for s in summaries}
    assert len(resumed) == 1
    (start,) = resumed
    # resumed from a checkpoint (a multiple of 4) at most two intervals before the failure at step 10
    assert start is not None and start % 4 == 0 and 10 - 8 <= 10 - start <= 8
    assert all(s["first_step"] == start + 1 and s["last_step"] == 16 for s in summaries)
    assert result.resumed_from == [start]  # reported by metagen (a warning, and tags on the MLflow run)
    final = load_learner(result.checkpoint)
    assert final.state.step == 16
    steps = [h["step"] for h in final.state.history]
    assert steps == sorted(set(steps)) and steps[-1] == 16


def test_tune_asha_stops_the_absurd_trial(local_ray: None, tmp_path: Path, digits_prepared: Path) -> None:
    from components.tuning import run_tune

    params = make_params(
        *FAST, "tune.max_steps=12", "tune.val_every=3", "tune.grace_period=1", "tune.reduction_factor=2",
        "tune.search_space={meta.outer_lr: {values: [0.003, 0.002, 1.0e-9]}}",
        f"train.storage_path={tmp_path / 'ray'}",
    )
    outcome = run_tune(params, digits_prepared, tmp_path / "reports")
    trials = outcome.trials
    assert len(trials) == 3 and all(t["error"] is None for t in trials)
    absurd = next(t for t in trials if t["meta.outer_lr"] == 1.0e-9)
    assert absurd["stopped_early"] and absurd["training_iteration"] < 4
    best = min(trials, key=lambda t: t["val_loss"])
    assert outcome.best_config == {"meta.outer_lr": best["meta.outer_lr"]}
    assert outcome.best_params.meta.outer_lr == best["meta.outer_lr"] != 1.0e-9
    table = json.loads(outcome.table_path.read_text())
    assert table["best"]["val_loss"] == outcome.best_metric
    assert (tmp_path / "reports" / "tune_results.csv").is_file()
