"""A real 2-node Ray cluster on this machine (ray.cluster_utils.Cluster): one worker per node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from components.meta.trainer import load_learner
from components.training import train_distributed, worker_summaries
from tests.conftest import make_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def two_node_cluster() -> Iterator[object]:
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_one_worker_on_each_node(two_node_cluster: object, tmp_path: Path, digits_prepared: Path) -> None:
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    params = make_params("model.width=16", "meta.k_query=5", "train.val_tasks=2", "train.num_workers=2",
                         "train.steps=4", "train.report_every=2", "train.val_every=4", "train.checkpoint_every=4",
                         f"train.storage_path={tmp_path / 'ray'}")
    result = train_distributed(params, digits_prepared, tmp_path / "out", name="two-nodes",
                               placement_strategy="STRICT_SPREAD")
    summaries = worker_summaries(tmp_path / "ray" / "two-nodes")
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    assert len({s["node_id"] for s in summaries}) == 2  # each node ran a worker
    assert all(s["last_step"] == 4 for s in summaries)
    assert load_learner(result.checkpoint).state.step == 4
