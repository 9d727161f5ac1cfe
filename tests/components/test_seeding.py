"""A seeded model build gives the same weights whatever other threads of the process build meanwhile
(`metagen run` trains the `pretrain` baseline while the extractor's check and the training's
driver build theirs: two runs of the same faces settings trained two different baselines)."""

from __future__ import annotations

import sys
import threading

import torch

from components.evaluation.inception import build_fid_inception
from components.models.vae import VAEConfig, build_vae, new_vae


def test_a_seeded_build_is_the_same_while_other_threads_build_models() -> None:
    cfg = VAEConfig(3, 32, 4, 8, "gaussian", 4)
    alone = build_vae(cfg, seed=3).state_dict()
    stop = threading.Event()

    def churn(build) -> None:  # noqa: ANN001
        while not stop.is_set():
            build()

    others = [threading.Thread(target=churn, args=(lambda: new_vae(cfg),)),  # unseeded, as the driver's
              threading.Thread(target=churn, args=(lambda: build_vae(cfg, seed=7),)),  # seeded, another seed
              threading.Thread(target=churn, args=(build_fid_inception,))]  # the extractor's check
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns as often as they can
    try:
        for t in others:
            t.start()
        built = [build_vae(cfg, seed=3).state_dict() for _ in range(10)]
    finally:
        stop.set()
        for t in others:
            t.join()
        sys.setswitchinterval(interval)
    for state in built:
        assert all(torch.equal(state[k], alone[k]) for k in alone)
    other = build_vae(cfg, seed=4).state_dict()
    assert not all(torch.equal(other[k], alone[k]) for k in alone)  # the seed does set the weights
