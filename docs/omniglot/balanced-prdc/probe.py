"""Meta-val (all 21 characters, 3 repeats of their own seeds): PRDC of the attention model and
`pretrain` (their chosen settings) with the generated set as scored (64 per class) and balanced
(15 per class = as many as the held-out reals; 4 disjoint stratified subsets, averaged)."""
import json, sys
from pathlib import Path
import numpy as np, torch
from components.params import load_params
from components.data.prepare import load_split, read_manifest
from components.evaluation.evaluate import load_extractor, reference_pretrain
from components.evaluation.protocol import Protocol, run_generators, draw_episode
from components.evaluation.memorisation import prdc
from components.meta.baselines import FinetuneGenerator, MetaGenerator
from components.meta.adaptation import AdaptationRule
from components.meta.trainer import load_learner
from components.models.vae import param_dict
torch.set_num_threads(2)
params = load_params("params.yaml"); ev = params.eval
manifest = read_manifest(Path("prepared"))
protocol = Protocol(ev, params.meta.k_shot, manifest["splits"]["test"]["sha256"])
extractor, _ = load_extractor(params, Path(ev.features_dir))
val = load_split(Path("prepared"), "val")
feats = extractor.features(torch.from_numpy(val.images))
meta = MetaGenerator(load_learner(Path("/tmp/att_ckpt.pt")).learner, AdaptationRule.from_params(params))
pre = reference_pretrain(params, Path("prepared"), Path("checkpoints"))
gens = [meta.with_settings(5e-5, 1.0), FinetuneGenerator("pretrain", pre, param_dict(pre), ev.finetune_steps, 3e-4)]
seeds = [ev.seed + 7 + 1000 * r for r in range(3)]
res = run_generators(gens, val, feats, extractor, protocol, seeds, ("support",), score_aug=False, score_nll=False)
k = ev.prdc_k
for g, reps in zip(gens, res):
    for r, (seed, rep) in enumerate(zip(seeds, reps)):
        ep = draw_episode(val, protocol.k_shot, seed)
        real = feats[np.concatenate(ep.heldout)]
        per_class = rep.samples[("support", 1.0)]
        fake_c = [extractor.features(s) for s in per_class]
        m_all = prdc(real, np.concatenate(fake_c), k)
        n = min(len(h) for h in ep.heldout)
        subsets = [prdc(real, np.concatenate([f[i * n:(i + 1) * n] for f in fake_c]), k) for i in range(len(fake_c[0]) // n)]
        bal = {key: float(np.mean([s[key] for s in subsets])) for key in subsets[0]}
        print(json.dumps({"model": g.name, "repeat": r, "fid": round(rep.metrics[("support", 1.0)]["fid"], 2),
                          "copy": round(rep.metrics[("support", 1.0)]["copy_rate"], 4), "real": len(real),
                          "as_scored": {k2: round(v, 4) for k2, v in m_all.items()},
                          "balanced": {k2: round(v, 4) for k2, v in bal.items()}, "subsets": len(subsets)}), flush=True)
