"""Meta-val (the 8 settings-choice characters): support FID / copy / recall of the attention model and
`pretrain` at sampling temperatures above 1 too (the choice's own seed and code path)."""
import json, sys
from dataclasses import replace
from pathlib import Path
import torch
from components.params import load_params
from components.data.prepare import load_split, read_manifest
from components.evaluation.evaluate import load_extractor, pretrained_baseline, choice_classes
from components.evaluation.protocol import Protocol, run_generators
from components.meta.baselines import FinetuneGenerator, MetaGenerator
from components.meta.adaptation import AdaptationRule
from components.meta.trainer import load_learner, vae_config
from components.models.vae import param_dict, ConvVAE
params = load_params("params.yaml"); ev = params.eval
manifest = read_manifest(Path("prepared"))
protocol = Protocol(ev, params.meta.k_shot, manifest["splits"]["test"]["sha256"])
extractor, _ = load_extractor(params, Path(ev.features_dir))
val = choice_classes(load_split(Path("prepared"), "val"), ev)
train = load_split(Path("prepared"), "train")
feats = extractor.features(torch.from_numpy(val.images))
meta = MetaGenerator(load_learner(Path("/tmp/att_ckpt.pt")).learner, AdaptationRule.from_params(params))
plain = replace(vae_config(params, train), context_dim=0, kl_weight=1.0)
pre = pretrained_baseline(params, plain, train, Path("checkpoints"), manifest["splits"]["train"]["sha256"])
gens = [meta.with_settings(0.0, 1.0), meta.with_settings(5e-5, 1.0),
        FinetuneGenerator("pretrain", pre, param_dict(pre), ev.finetune_steps, 3e-4), FinetuneGenerator("pretrain", pre, param_dict(pre), ev.finetune_steps, 1e-4)]
temps = [1.5, 1.25, 1.0, 0.8]
res = run_generators(gens, val, feats, extractor, protocol, [ev.seed + 7], ("support",), score_aug=False, score_nll=False, temperatures=temps)
for g, r in zip(gens, res):
    for t in temps:
        m = r[0].metrics[("support", t)]
        print(json.dumps({"model": g.name, "lr": g.lr, "T": t, **{k: round(float(m[k]), 4) for k in ("fid", "copy_rate", "precision", "recall")}}), flush=True)
