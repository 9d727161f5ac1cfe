"""Ray Train on the session's real 2-node Ray (2 CPUs): data-parallel equivalence, a killed worker, Ray Tune with ASHA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.meta.checkpoint import load_checkpoint
from components.meta.trainer import load_learner, train_local
from components.training import train_distributed, worker_summaries
from tests.conftest import make_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FAST = ["model.width=16", "meta.meta_batch_size=4", "meta.k_query=5", "train.val_tasks=2", "train.num_threads=1"]


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_workers_with_a_killed_one_resume_to_the_in_process_run(ray_cluster: object, tmp_path: Path,
                                                                     digits_prepared: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """One loop for both paths, and exact resumption: two data-parallel workers, the last one
    killed at step 10 and the group restarted from the step-8 checkpoint, end with the steps,
    losses and weights of the uninterrupted in-process run (val_every=3 is not a multiple of
    report_every=2: validation and reports interleave as in-process)."""
    common = [*FAST, "train.steps=12", "train.report_every=2", "train.val_every=3", "train.checkpoint_every=4",
              f"train.storage_path={tmp_path / 'ray'}"]
    local = train_local(make_params(*common), digits_prepared, tmp_path / "local", progress=False)
    faulty = make_params(*common, "train.num_workers=2", "train.fail_at_step=10", "train.max_failures=2")
    two = train_distributed(faulty, digits_prepared, tmp_path / "two", name="fault-run")
    shown = capsys.readouterr().out  # the terminal followed the workers' reports
    assert "meta-train (Ray Train)" in shown and "12/12" in shown and "steps/s" in shown, shown
    assert "loss " in shown and "val -ELBO " in shown, shown

    run_dir = tmp_path / "ray" / "fault-run"
    assert (run_dir / ".fault_injected").is_file()
    summaries = worker_summaries(run_dir)
    assert len(summaries) == 2  # only the restarted group finished; the killed one left no summary
    assert {s["resumed_from"] for s in summaries} == {8}  # the last checkpoint before the failure at step 10
    assert all(s["first_step"] == 9 and s["last_step"] == 12 for s in summaries)
    assert two.resumed_from == [8]  # reported by metagen (a warning, and tags on the MLflow run)

    final = load_learner(two.checkpoint)
    assert final.state.step == 12
    assert [h["step"] for h in local.history] == [h["step"] for h in final.state.history] == [2, 3, 4, 6, 8, 9, 10, 12]
    assert [h["step"] for h in local.history if "val_loss" in h] == [3, 6, 9, 12]
    for a, b in zip(local.history, final.state.history, strict=True):
        for key in ("train_loss", "val_loss", "val_loss_unadapted"):
            assert (key in a) == (key in b)
            if key in a:  # two shards sum in another order: float-level differences, nothing more
                assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), (a["step"], key)
    assert {h["world_size"] for h in two.history} == {2.0}
    assert _max_diff(load_checkpoint(two.checkpoint)["learner"]["model"],
                     load_checkpoint(local.checkpoint)["learner"]["model"]) <= 1e-5


def test_tune_asha_stops_the_absurd_trial(ray_cluster: object, tmp_path: Path, digits_prepared: Path) -> None:
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


@pytest.mark.parametrize("where", ["in-process", "ray-train"])
def test_a_requested_stop_ends_the_training_at_the_next_step(where: str, ray_cluster: object, tmp_path: Path,
                                                            digits_prepared: Path) -> None:
    """Work beside the training (here a thread that waits for the first checkpoint, at step 5) stops
    it: in-process directly, on Ray Train's workers through the stop flag; the training raises with
    the reason and the step it reached, far before its 100,000 steps."""
    import threading

    from components.stopping import TrainingStopped, request_stop, stop_reason, stoppable

    params = make_params(*FAST, "train.steps=100000", "train.checkpoint_every=5", "train.report_every=5",
                         "train.val_every=100000", f"train.storage_path={tmp_path / 'ray'}")
    done = threading.Event()

    def stop_after_first_checkpoint() -> None:
        while not done.wait(0.2):
            if (tmp_path / "out" / "checkpoint.pt").exists() or list((tmp_path / "ray").glob("stopped-run/checkpoint_*")):
                request_stop("the extractor cannot be trusted")
                return

    watcher = threading.Thread(target=stop_after_first_checkpoint, daemon=True)
    with stoppable(), pytest.raises(TrainingStopped, match=r"the extractor cannot be trusted \(training stopped at "
                                                           r"meta-step \d+\)") as stopped:
        watcher.start()
        try:
            if where == "in-process":
                train_local(params, digits_prepared, tmp_path / "out", progress=False)
            else:
                train_distributed(params, digits_prepared, tmp_path / "out", name="stopped-run", progress=False)
        finally:
            done.set()
    step = int(str(stopped.value).rsplit("meta-step ", 1)[1].rstrip(")"))
    assert 5 <= step < 100000
    request_stop("outside any stoppable block: nothing to stop")  # ignored
    assert stop_reason() is None
