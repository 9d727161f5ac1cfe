"""A real 2-node Ray cluster on this machine (the session's ``ray_cluster``): one worker per node."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.meta.trainer import load_learner
from components.training import train_distributed, worker_summaries
from tests.conftest import make_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_one_worker_on_each_node(ray_cluster: object, tmp_path: Path, digits_prepared: Path) -> None:
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


def _plus(shared: int, item: int) -> int:
    return shared + item


def _node_of(_shared: object, _item: int) -> str:
    import time

    import ray

    time.sleep(0.2)  # long enough that one node's worker cannot take every chunk
    return ray.get_runtime_context().get_node_id()


def test_evaluation_spread_over_both_nodes_equals_in_process(ray_cluster: object, tmp_path: Path,
                                                             digits_prepared: Path) -> None:
    """Classes and scoring spread over the 2-node cluster give exactly what one process gives."""
    from dataclasses import replace

    import torch

    from components.data.prepare import load_split, read_manifest
    from components.evaluation.evaluate import build_domain_features, load_extractor
    from components.evaluation.parallel import LocalMapper, RayMapper
    from components.evaluation.protocol import Protocol, run_generators
    from components.meta.adaptation import AdaptationRule
    from components.meta.generators import FinetuneGenerator, MetaGenerator, SupportReplay
    from components.meta.trainer import build_learner, vae_config
    from components.models.vae import ConvVAE

    assert len(set(RayMapper().map(_node_of, None, list(range(8))))) == 2  # both nodes take chunks
    assert RayMapper().map(_plus, 100, list(range(11))) == list(range(100, 111))  # 4 strided chunks, in order

    params = make_params("model.width=8", "eval.samples_per_class=12", "eval.kid_subsets=3", "eval.kid_subset_size=16",
                         "eval.augment_steps=5", "eval.feature_steps=20", "eval.adapt_steps=2",
                         "eval.min_extractor_accuracy=0", "eval.nll_samples=4", "eval.nll_choice_samples=4", "eval.nll_max_images=4")
    test = load_split(digits_prepared, "test")
    learner = build_learner(params.meta, vae_config(params.model, test), seed=0)
    build_domain_features(params, digits_prepared, tmp_path / "features")
    extractor, _ = load_extractor(params, tmp_path / "features")
    protocol = Protocol(params.eval, params.meta.k_shot, read_manifest(digits_prepared)["splits"]["test"]["sha256"])
    feats = extractor.features(torch.from_numpy(test.images))
    plain = replace(learner.model.cfg, context_dim=0)
    gens = [MetaGenerator(learner, AdaptationRule.from_params(params)),
            FinetuneGenerator("scratch", ConvVAE(plain), None, steps=3, lr=1e-3), SupportReplay()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray task runs with: the same arithmetic, bit for bit
    try:
        local = run_generators(gens, test, feats, extractor, protocol, [3, 1003], mapper=LocalMapper())
    finally:
        torch.set_num_threads(threads)
    spread = run_generators(gens, test, feats, extractor, protocol, [3, 1003], mapper=RayMapper())
    for per_gen_local, per_gen_spread in zip(local, spread, strict=True):
        for a, b in zip(per_gen_local, per_gen_spread, strict=True):
            assert a.nll == b.nll
            assert a.metrics == b.metrics
            for mode in a.samples:
                assert all(torch.equal(x, y) for x, y in zip(a.samples[mode], b.samples[mode], strict=True))
    assert local[0][0].metrics[("support", 1.0)]["fid"] > 0  # a real score, not an empty one
