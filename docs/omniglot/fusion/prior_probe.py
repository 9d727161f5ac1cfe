"""IWAE NLL of held-out class images under alternative class priors (decoder, encoder unchanged)."""
import math, sys, json
from pathlib import Path
import numpy as np, torch
from components.params import load_params
from components.data.prepare import load_split
from components.meta.trainer import load_learner
from components.meta.adaptation import AdaptationRule
from components.models.vae import _call, encode, decode
torch.set_num_threads(1)
root = Path(sys.argv[1]); ckpt = Path(sys.argv[2]); which = sys.argv[3] if len(sys.argv) > 3 else "val"
params = load_params(root / "params.yaml")
split = load_split(root / params.data.prepared_dir, which)
r = load_learner(ckpt); model = r.learner.model; P = r.learner.params()
rule = AdaptationRule.from_params(params)
S = 100
def lognorm(z, mu, lv):  # z (S,n,d) mu (..., d)
    return (-0.5 * ((z - mu) ** 2 / lv.exp() + lv + math.log(2 * math.pi))).sum(-1)
res = {}
g = torch.Generator().manual_seed(0)
rng = np.random.default_rng(0)
X = torch.from_numpy(split.images).float()
for c in range(len(split.classes)):
    idx = np.flatnonzero(split.labels == c); rng.shuffle(idx)
    sup, held = X[idx[:5]], X[idx[5:]]
    with torch.no_grad():
        fast = rule.adapt(model, P, None, sup, g)
        mu, lv = encode(model, fast, held)
        smu, slv = encode(model, fast, sup)
        pmu, plv = _call(model, fast, (held,), "prior")
        eps = torch.randn(S, len(held), mu.shape[-1], generator=g)
        z = mu + eps * (0.5 * lv).exp()
        out = decode(model, fast, z.reshape(S * len(held), -1))
        lpx = model.log_likelihood(out, held.repeat(S, 1, 1, 1)).view(S, len(held))
        lq = lognorm(z, mu, lv)
        priors = {"model": lognorm(z, pmu[0], plv[0])}
        for s in (1.0, 1.5, 2.0, 3.0):
            comp = lognorm(z[:, :, None, :], smu[None, None], slv[None, None] + 2 * math.log(s))  # (S,n,K)
            mix = torch.logsumexp(comp, -1) - math.log(5)
            priors[f"sup_s{s}"] = mix
            for a in (0.5, 0.2):
                priors[f"blend{a}_s{s}"] = torch.logaddexp(math.log(a) + priors["model"], math.log(1 - a) + mix)
        for k, lp in priors.items():
            lw = lpx + lp - lq
            nll = (math.log(S) - torch.logsumexp(lw, 0)).mean().item()
            res.setdefault(k, []).append(nll)
        res.setdefault("kl_model", []).append((lq - priors["model"]).mean().item())
        res.setdefault("rec", []).append((-lpx).mean().item())
for k, v in res.items():
    print(f"{k:16s} {np.mean(v):8.2f}")
