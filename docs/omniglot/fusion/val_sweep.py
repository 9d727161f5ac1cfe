"""Meta-val sweep (docs/omniglot/context-steps/val_sweep.py) with two probes added:
FUSION=<alpha>: support sampling fuses the K supports' posteriors with Dirichlet(alpha) weights
(F2GAN / MatchingGAN-style interpolation) instead of drawing one support; EVAL_KL=<beta>: the
context steps at generation time use beta instead of the training kl_weight.
Usage: python val_sweep.py ROOT TEMPS LRS [val|test] CKPT   (JSON to /tmp/exp3/)."""
import json, os, sys, time
from dataclasses import replace
from pathlib import Path
import torch
from components.models import vae as _vae
if os.environ.get("OUTPUT") == "mode":
    _vae.ConvVAE.mean_image = lambda self, out: (out > 0).float()
from components.params import load_params
from components.data.prepare import load_split, read_manifest
from components.evaluation.evaluate import load_extractor, pretrained_baseline
from components.evaluation.protocol import Protocol, run_generators, select_classes
from components.meta.baselines import FinetuneGenerator, MetaGenerator
from components.meta.adaptation import AdaptationRule
from components.meta.trainer import load_learner, vae_config
from components.models.vae import param_dict


import components.meta.adaptation as _A
from components.meta.algorithms import adapt_keys as _adapt_keys
from components.models.vae import per_pixel_loss as _ppl
_orig_ft = _A.finetune
def _ft(model, params, support, steps, lr, generator):
    scope = os.environ.get("FT_SCOPE")
    if not scope or steps == 0 or lr == 0:
        return _orig_ft(model, params, support, steps, lr, generator)
    keys = set(_adapt_keys(model, scope))
    leaves = {k: v.detach().clone().requires_grad_(k in keys) for k, v in params.items()}
    opt = torch.optim.Adam([leaves[k] for k in keys], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            eps = torch.randn(support.shape[0], model.cfg.latent_dim, generator=generator, dtype=support.dtype)
            loss = _ppl(model, leaves, support, eps)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return {k: v.detach() for k, v in leaves.items()}
_A.finetune = _ft


import components.meta.baselines as _B
_orig_sample = _B.sample
def _fusion_sample(model, params, n, generator, mode="prior", support=None, temperature=1.0):
    alpha = os.environ.get("FUSION")
    if mode != "support" or not alpha:
        return _orig_sample(model, params, n, generator, mode, support, temperature)
    a = float(alpha)
    latent = model.cfg.latent_dim
    noise = torch.randn(n, latent, generator=generator)
    mu, logvar = _vae.encode(model, params, support)
    gam = torch.distributions.Gamma(torch.full((n, len(support)), a), torch.ones(n, len(support)))
    g = -torch.log(torch.rand(n, len(support), generator=generator))  # Exp(1) = Gamma(1)
    if a != 1.0:
        # Gamma(a) via Marsaglia-free trick: Gamma(a) = Gamma(a+1) * U^(1/a); use torch's sampler seeded
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        g = gam.sample()
    w = g / g.sum(1, keepdim=True)
    z = w @ mu + temperature * noise * (w @ (0.5 * logvar).exp())
    return model.mean_image(_vae.decode(model, params, z))
_B.sample = _fusion_sample

root = Path(sys.argv[1]); temps = [float(t) for t in sys.argv[2].split(",")]; lrs = [float(x) for x in sys.argv[3].split(",")]
which = sys.argv[4] if len(sys.argv) > 4 else "val"
ckpt = Path(sys.argv[5]) if len(sys.argv) > 5 else root / "checkpoints"
params = load_params(root / "params.yaml", [x for x in os.environ.get("SETS", "").split() if x])
ev = params.eval
prep = root / params.data.prepared_dir
train = load_split(prep, "train"); split = load_split(prep, which)
man = read_manifest(prep)
extractor, acc = load_extractor(params, root / params.eval.features_dir)
feats = extractor.features(torch.from_numpy(split.images))
plain = replace(vae_config(params, train), context_dim=0, kl_weight=1.0)
t0 = time.time()
pre = pretrained_baseline(params, plain, train, root / params.train.checkpoint_dir, man["splits"]["train"]["sha256"])
print("pretrain", time.time() - t0, flush=True)
restored = load_learner(ckpt)
if os.environ.get('EVAL_KL'):
    restored.learner.model.cfg = replace(restored.learner.model.cfg, kl_weight=float(os.environ['EVAL_KL']))
    print('eval kl', restored.learner.model.cfg.kl_weight)
rule = AdaptationRule.from_params(params)
steps_list = [int(x) for x in os.environ.get("ADAPT_STEPS", str(rule.steps)).split(",")]
gens = [replace(MetaGenerator(restored.learner, replace(rule, steps=st)).with_settings(lr, 1.0), name=f"meta@{lr:g}s{st}") for lr in lrs for st in steps_list] + [FinetuneGenerator(f"pretrain@{lr:g}", pre, param_dict(pre), ev.finetune_steps, lr) for lr in lrs if os.environ.get("PRE", "1") == "1"]
proto = Protocol(ev, params.meta.k_shot, man["splits"][which]["sha256"])
t0 = time.time()
res = run_generators(gens, split, feats, extractor, proto, [ev.seed + 7], tuple(os.environ.get("MODES","support").split(",")), score_aug=False, score_nll=bool(os.environ.get("NLL")), temperatures=temps)
out = {}
for g, r in zip(gens, res):
    for (mode, T), m in sorted(r[0].metrics.items()):
        out[f"{g.name}/{mode}/T{T}"] = {k: round(m[k], 3) for k in ("fid", "copy_rate", "precision", "recall", "nll_mean") if k in m}
        out[f"{g.name}/{mode}/T{T}"]["nll"] = None if r[0].nll is None else round(r[0].nll, 2)
        print(f"{g.name:14s} {mode:8s} T={T:<4} " + " ".join(f"{k}={v}" for k, v in out[f"{g.name}/{mode}/T{T}"].items()), flush=True)
print("took", time.time() - t0, flush=True)
json.dump(out, open(f"/tmp/exp3/sweep_{root.name}_{which}_{os.environ.get('TAG','x')}.json", "w"), indent=1)
