"""IWAE NLL of the attention checkpoint (lr 5e-5) or of `pretrain` (lr 3e-4) on one repeat of a split, with
the proposal q(z|x) widened: its std times each of the given scales, a stratified mixture (any proposal
gives a valid bound). Run in a clone with the Omniglot data prepared and the references cached:

    PYTHONPATH=. python probe.py CKPT|pretrain 1,1.5,2 100 [test|val]

(Written before components/models/vae.py took the mixture: here the samples are split ceil(S/J) per
scale, truncated, and the components weighted 1/J; the code weights them by their share of the samples.)
probe_test.jsonl / probe_val.jsonl: what it printed on the 21 test / 21 meta-val characters."""
import sys, json, math, time
from dataclasses import replace
from pathlib import Path
import numpy as np, torch
from components.params import load_params
from components.data.prepare import load_split, read_manifest
from components.evaluation.protocol import Protocol, draw_episode, repeat_seeds, class_seed, nll_seed
from components.meta.baselines import MetaGenerator, FinetuneGenerator
from components.meta.adaptation import AdaptationRule
from components.meta.trainer import load_learner
from components.models import vae as V
torch.set_num_threads(2)
SCALES = [float(s) for s in sys.argv[2].split(",")]
K = int(sys.argv[3]) if len(sys.argv) > 3 else 100
def lw(self, x, eps, context, memory):
    s, n = eps.shape[0], x.shape[0]
    mu, logvar = self.encode(x, context)
    std = (0.5 * logvar).exp()
    # mixture proposal: eps rows split evenly over the scales (stratified)
    scales = torch.tensor(SCALES).repeat_interleave(math.ceil(s / len(SCALES)))[:s].view(s, 1, 1)
    z = mu + eps * std * scales
    out = self.decode(z.reshape(s * n, -1), context, memory)
    log_px = self.log_likelihood(out, x.repeat(s, 1, 1, 1)).view(s, n)
    p_mu, p_logvar = self.prior(context, n)
    log_pz = V._log_normal(z, p_mu, p_logvar)
    comps = torch.stack([V._log_normal(z, mu, logvar + 2 * math.log(c)) for c in SCALES])
    log_qz = torch.logsumexp(comps, 0) - math.log(len(SCALES))
    return log_px + log_pz - log_qz
V.ConvVAE._log_weights = lw
params = load_params("params.yaml")
test = load_split(Path("prepared"), sys.argv[4] if len(sys.argv) > 4 else "test")
manifest = read_manifest(Path("prepared"))
protocol = Protocol(params.eval, params.meta.k_shot, manifest["splits"]["test"]["sha256"])
rule = AdaptationRule.from_params(params)
ev = params.eval
which = sys.argv[1]
if which == "pretrain":
    from components.evaluation.evaluate import vae_config, pretrained_baseline
    train = load_split(Path("prepared"), "train")
    plain = replace(vae_config(params, train), context_dim=0, kl_weight=1.0)
    m = pretrained_baseline(params, plain, train, Path("checkpoints"), manifest["splits"]["train"]["sha256"])
    gen = FinetuneGenerator("pretrain", V.ConvVAE(plain), V.param_dict(m), ev.finetune_steps if hasattr(ev, "finetune_steps") else 50, 3e-4)
else:
    restored = load_learner(Path(which))
    gen = MetaGenerator(restored.learner, replace(rule, finetune_lr=5e-5))
t = time.time()
seed = repeat_seeds(protocol)[0]
ep = draw_episode(test, protocol.k_shot, seed)
vals = []
for c in range(len(test.classes)):
    support = torch.from_numpy(test.images[ep.supports[c]])
    x = torch.from_numpy(test.images[ep.heldout[c][: ev.nll_max_images]])
    adapted = gen.adapt(support, torch.Generator().manual_seed(class_seed(seed, c)))
    vals.append(adapted.nll(x, K, torch.Generator().manual_seed(nll_seed(seed, c))))
print(json.dumps({"which": which, "scales": SCALES, "K": K, "nll": float(np.mean(vals)), "s": round(time.time() - t)}), flush=True)
