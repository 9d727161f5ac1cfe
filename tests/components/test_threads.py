"""Torch threads beside the training: the cores it leaves, split among concurrent work; a DVC
stage's command gets the thread count through its environment (real `dvc repro`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.data.dvc_ops import dvc_repro
from components.threads import threads_beside_training, torch_threads, training_cpus_here
from tests.conftest import make_params


def test_the_cores_the_training_leaves_split_among_the_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    one = make_params("train.num_workers=1", "train.cpus_per_worker=1").train
    four = make_params("train.num_workers=2", "train.cpus_per_worker=2").train
    assert training_cpus_here(one) == 1 and training_cpus_here(four) == 4
    assert threads_beside_training(one, local=False, streams=2) == 7   # (16 - 1) // 2
    assert threads_beside_training(four, local=False, streams=1) == 12
    assert threads_beside_training(one, local=True, streams=2) == 5    # in-process: the training is a stream too
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")                 # it trains on a cluster elsewhere
    assert training_cpus_here(one) == 0 and threads_beside_training(one, local=False, streams=2) == 8
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)                     # this machine kind: one thread each
    assert threads_beside_training(one, local=False, streams=2) == threads_beside_training(one, True, 1) == 1


def test_torch_threads_are_restored_after_the_block() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("the block failed")
    assert torch.get_num_threads() == before


def test_a_stage_command_runs_with_the_thread_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvc.repo import Repo

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    Repo.init(str(root)).close()
    probe = "import os; open('threads.txt', 'w').write(os.environ.get('OMP_NUM_THREADS', 'unset'))"
    (root / "dvc.yaml").write_text(f'stages:\n  probe:\n    cmd: {sys.executable} -c "{probe}"\n    outs:\n      - threads.txt\n')
    dvc_repro(root, "probe", threads=1)
    assert (root / "threads.txt").read_text() == "1"
    assert "OMP_NUM_THREADS" not in os.environ  # this process's environment as it was
    (root / "threads.txt").unlink()
    dvc_repro(root, "probe")
    assert (root / "threads.txt").read_text() == "unset"


_FEATURES = """
import sys
from pathlib import Path
from components.evaluation.evaluate import build_domain_features
from tests.conftest import make_params
params = make_params("eval.feature_steps=60", f"train.num_threads={sys.argv[2]}")
print(build_domain_features(params, Path(sys.argv[1]), Path(sys.argv[3]))["digest"])
"""


@pytest.mark.parametrize("threads", [0, 1])
def test_the_extractor_is_the_same_whatever_the_threads_of_the_process(digits_prepared: Path, tmp_path: Path,
                                                                        threads: int) -> None:
    """``train.num_threads`` (1 by default) fixes the torch threads of every training: the same
    data and code give the same extractor in a process whose default is 1 thread or 2 (0: the
    process's default, whose figures may move with it)."""
    digests = []
    for omp in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": omp}
        out = subprocess.run([sys.executable, "-c", _FEATURES, str(digits_prepared), str(threads), str(tmp_path / omp)],
                             env=env, capture_output=True, text=True, timeout=300, check=True,
                             cwd=Path(__file__).parents[2])
        digests.append(out.stdout.split()[-1])
    if threads:
        assert digests[0] == digests[1]
    else:
        assert digests[0] != digests[1]  # why the threads are fixed: the default moves the weights
