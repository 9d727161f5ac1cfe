"""Test NLL of a meta checkpoint at given fine-tuning lrs, exactly as the evaluation computes it."""
import sys, json
from dataclasses import replace
from pathlib import Path
import numpy as np, torch
from components.params import load_params
from components.data.prepare import load_split, read_manifest
from components.evaluation.protocol import Protocol, draw_episode, repeat_seeds, class_seed, nll_seed
from components.meta.baselines import MetaGenerator
from components.meta.adaptation import AdaptationRule
from components.meta.trainer import load_learner
torch.set_num_threads(2)
ckpt, lrs = sys.argv[1], [float(x) for x in sys.argv[2].split(",")]
params = load_params("params.yaml")
test = load_split(Path("prepared"), "test")
manifest = read_manifest(Path("prepared"))
protocol = Protocol(params.eval, params.meta.k_shot, manifest["splits"]["test"]["sha256"])
restored = load_learner(Path(ckpt))
rule = AdaptationRule.from_params(params)
ev = params.eval
for lr in lrs:
    gen = MetaGenerator(restored.learner, replace(rule, finetune_lr=lr))
    per_repeat = []
    for seed in repeat_seeds(protocol):
        ep = draw_episode(test, protocol.k_shot, seed)
        vals = []
        for c in range(len(test.classes)):
            support = torch.from_numpy(test.images[ep.supports[c]])
            x = torch.from_numpy(test.images[ep.heldout[c][: ev.nll_max_images]])
            g = torch.Generator().manual_seed(class_seed(seed, c))
            adapted = gen.adapt(support, g)
            vals.append(adapted.nll(x, ev.nll_samples, torch.Generator().manual_seed(nll_seed(seed, c)), tuple(ev.nll_proposal_scales)))
        per_repeat.append(float(np.mean(vals)))
    print(json.dumps({"ckpt": ckpt, "lr": lr, "nll_mean": float(np.mean(per_repeat)), "per_repeat": per_repeat}), flush=True)
