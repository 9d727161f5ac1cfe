"""The phase recorder behind reports/timings.json and the run's timing.* metrics."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from components.timing import Timings, metric_key, write


def test_nested_phases_overhead_and_order(tmp_path: Path) -> None:
    t = Timings()
    with t.phase("train"):
        with t.phase("ray start-up", "overhead"):
            time.sleep(0.02)
        with t.phase("fit"):
            time.sleep(0.03)
    with t.phase("mlflow logging", "overhead"):
        with t.phase("inner call", "overhead"):  # nested in an overhead phase: counted once
            time.sleep(0.01)
    t.add("prefect start-up", 0.001, "overhead")  # began 1 ms ago: listed last
    s = t.summary()
    assert list(s["phases"])[:3] == ["train", "train/ray start-up", "train/fit"]  # the order they began
    p = s["phases"]
    # rounded to the millisecond each: the two children's sum may pass the parent's by 1 ms
    assert p["train"]["seconds"] >= p["train/ray start-up"]["seconds"] + p["train/fit"]["seconds"] - 1.001e-3
    expected = p["train/ray start-up"]["seconds"] + p["mlflow logging"]["seconds"] + 0.001
    # each figure is rounded to the millisecond: two rounded terms and the rounded sum differ by
    # at most 1.5 ms; counting "inner call" twice would add its 10 ms
    assert abs(s["overhead_s"] - expected) <= 2e-3
    out = write(tmp_path / "timings.json", s)
    assert json.loads(out.read_text())["phases"]["train/fit"]["kind"] == "work"


def test_repeated_phases_are_summed_and_threads_nest_separately() -> None:
    t = Timings()

    def other() -> None:
        with t.phase("references"):
            time.sleep(0.01)

    with t.phase("evaluate"):
        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
        for _ in range(3):
            with t.phase("adapt"):
                pass
    p = t.summary()["phases"]
    assert p["evaluate/adapt"]["count"] == 3
    assert "references" in p  # the other thread's phase is not nested under this thread's


def test_metric_keys_are_valid_mlflow_names() -> None:
    from mlflow.utils.validation import _validate_metric_name

    key = metric_key("evaluate/feature extractor (dvc repro features)")
    assert key == "timing.evaluate.feature_extractor_dvc_repro_features"
    _validate_metric_name(key)
