"""The in-process trainer: a real learning test on the digits, bit-identical resumption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.data.prepare import load_split
from components.meta.checkpoint import load_checkpoint
from components.meta.trainer import load_learner, make_sampler, train_local, validate
from components.errors import CheckpointError, TrainingError
from components.lr_schedule import lr_factor
from tests.conftest import make_params

FAST = ["model.width=16", "meta.meta_batch_size=2", "meta.k_query=5", "train.val_tasks=4", "train.val_every=5",
        "train.report_every=5", "train.checkpoint_every=5"]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_is_bit_identical(tmp_path: Path, digits_prepared: Path, schedule: str) -> None:
    """Stopped at step 7 and resumed, the training ends bit-identical to the straight run (the
    cosine rate is a function of the step, so the resumed steps get the rates they would have had)."""
    params = make_params(*FAST, "train.steps=12", "meta.algorithm=metasgd", "meta.inner_steps=1",
                         f"train.lr_schedule={schedule}")
    straight = train_local(params, digits_prepared, tmp_path / "a", progress=False)
    train_local(params, digits_prepared, tmp_path / "b", progress=False, stop_after=7)
    assert load_checkpoint(tmp_path / "b")["step"] == 7
    resumed = train_local(params, digits_prepared, tmp_path / "b", progress=False)
    assert straight.step == resumed.step == 12
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for k, v in a["learner"]["model"].items():
        assert torch.equal(v, b["learner"]["model"][k]), k
    for k, v in a["learner"]["lrs"].items():
        assert torch.equal(v, b["learner"]["lrs"][k]), k
    timeless = [[{k: v for k, v in h.items() if k != "steps_per_s"} for h in c["history"]] for c in (a, b)]
    assert timeless[0] == timeless[1]
    last_lr = b["learner"]["optimizer"]["param_groups"][0]["lr"]  # the rate of the last step taken
    assert last_lr == pytest.approx(params.meta.outer_lr * lr_factor(params.train.lr_schedule, 11, 12))


def test_other_params_do_not_resume(tmp_path: Path, digits_prepared: Path) -> None:
    train_local(make_params(*FAST, "train.steps=3"), digits_prepared, tmp_path, progress=False)
    result = train_local(make_params(*FAST, "train.steps=3", "meta.outer_lr=0.002"), digits_prepared, tmp_path,
                         progress=False)
    assert result.step == 3 and load_checkpoint(tmp_path)["params"]["meta"]["outer_lr"] == 0.002


def test_non_finite_loss_stops_training_naming_the_step(tmp_path: Path, digits_prepared: Path) -> None:
    """An absurd inner learning rate makes the loss non-finite: training stops at that step with a
    clear error, and no checkpoint of NaN weights is written."""
    params = make_params(*FAST, "train.steps=6", "meta.inner_lr=1e30")
    with pytest.raises(TrainingError, match=r"meta-step 1: non-finite (loss|meta-gradient).*meta.inner_lr"):
        train_local(params, digits_prepared, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_bad_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable metagen checkpoint"):
        load_learner(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_learner(tmp_path / "nope")


@pytest.mark.slow
def test_meta_training_makes_adaptation_help_on_held_out_digits(tmp_path: Path, digits_prepared: Path) -> None:
    params = make_params("train.steps=200", "train.val_every=50", "train.checkpoint_every=100")
    result = train_local(params, digits_prepared, tmp_path, progress=False)
    learner = load_learner(result.checkpoint).learner
    test = load_split(digits_prepared, "test")
    sampler = make_sampler(params, test, seed=99, training=False)
    scores = validate(learner, sampler, n_tasks=8, seed=7)
    # gradient steps on the set encoder's context of K=5 images of an unseen digit must lower its
    # query negative ELBO further (that the context itself carries the class: test_set_vae.py)
    assert scores["val_loss"] < scores["val_loss_unadapted"] - 0.5, scores
    vals = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert vals[-1] < vals[0] - 5.0, vals
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < first
