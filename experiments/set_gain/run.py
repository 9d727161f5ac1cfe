"""What conditioning on the set is worth: the set-conditioned VAE against the same VAE without it.

Trains two models of one architecture from the same seed on the meta-train classes of a prepared
dataset: ``set`` (the set encoder reads K supports of a class; the ELBO of other images of that
class under its context) and ``plain`` (``context_dim 0``: the ELBO of images drawn from every
class), the same number of Adam steps on the same number of images a step. Then the held-out NLL
(IWAE, the widened mixture proposal) of the meta-val classes' images beyond their first K, the
``set`` model given those K: nats an image and bits per dimension. ``--also-train`` scores the
meta-train classes' images the same way (both models trained on them): a gain much larger there
than on meta-val says the set's benefit is limited by the number of training classes, not by the
model. Decide settings here, on meta-val, never on meta-test. No meta-learning (no inner loop) and no fine-tuning: this isolates
the architecture's set gain; the pipeline's evaluation measures the rest. Prints JSON (progress on
stderr). Example:

    python experiments/set_gain/run.py --prepared prepared --arch ladder --likelihood gaussian \\
        --steps 1500
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from components.data.binarize import binarized_split
from components.data.prepare import Split, load_split
from components.models.vae import ARCHS, VAEConfig, build_vae, iwae_nll, neg_elbo, param_dict, with_context


def _classes(split: Split) -> list[torch.Tensor]:
    return [torch.from_numpy(x).float() for x in split.by_class()]


def _train(model: torch.nn.Module, classes: list[torch.Tensor], args: argparse.Namespace, conditional: bool) -> dict:
    weights = {k: v.clone().requires_grad_(True) for k, v in param_dict(model).items()}
    opt = torch.optim.Adam(weights.values(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    pool = torch.cat(classes)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        if conditional:  # a batch of tasks: K supports, then the ELBO of Q other images of the class
            loss = torch.zeros(())
            for _ in range(args.batch):
                x = classes[int(torch.randint(len(classes), (1,), generator=gen))]
                order = torch.randperm(len(x), generator=gen)
                support, query = x[order[: args.k]], x[order[args.k : args.k + args.queries]]
                if args.binarize:
                    support, query = torch.bernoulli(support, generator=gen), torch.bernoulli(query, generator=gen)
                eps = torch.randn(len(query), model.noise_dim, generator=gen)
                loss = loss + neg_elbo(model, with_context(model, weights, support), query, eps).mean() / args.batch
        else:  # as many images a step, from every class
            x = pool[torch.randint(len(pool), (args.batch * args.queries,), generator=gen)]
            if args.binarize:
                x = torch.bernoulli(x, generator=gen)
            loss = neg_elbo(model, weights, x, torch.randn(len(x), model.noise_dim, generator=gen)).mean()
        opt.zero_grad()
        (loss / model.num_pixels).backward()
        torch.nn.utils.clip_grad_norm_(list(weights.values()), 10.0)
        opt.step()
        if step % 100 == 0:
            print(f"{'set' if conditional else 'plain'} step {step}: {float(loss):.2f} nats", file=sys.stderr)
    model.load_state_dict({k: v.detach() for k, v in weights.items()})
    return {"steps": args.steps, "train_seconds": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def _held_out(model: torch.nn.Module, classes: list[torch.Tensor], args: argparse.Namespace, conditional: bool) -> dict:
    weights = param_dict(model)
    per_class = []
    for c, x in enumerate(classes[: args.classes]):
        gen = torch.Generator().manual_seed(args.seed + c)
        support, held = x[: args.k], x[args.k : args.k + args.images]
        task = with_context(model, weights, support) if conditional else weights
        per_class.append(float(iwae_nll(model, task, held, args.samples, gen, (1.0, 1.5, 2.0, 3.0)).mean()))
    nats = np.array(per_class)
    bpd = nats / (model.num_pixels * math.log(2))
    return {"nll_nats": float(nats.mean()), "nll_nats_sem": float(nats.std(ddof=1) / math.sqrt(len(nats))),
            "bits_per_dim": float(bpd.mean()), "classes": len(nats)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, required=True, help="the prepared data directory (train.npz, val.npz)")
    ap.add_argument("--arch", choices=ARCHS, default="ladder")
    ap.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    ap.add_argument("--binarize", action="store_true", help="binary pixels (Bernoulli draws; val drawn once)")
    ap.add_argument("--latent-dim", type=int, default=8)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--context-dim", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1500, help="Adam steps of each model")
    ap.add_argument("--batch", type=int, default=8, help="tasks a step (plain: batch x queries images)")
    ap.add_argument("--k", type=int, default=5, help="supports a class")
    ap.add_argument("--queries", type=int, default=10, help="images a task beside its supports")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--classes", type=int, default=1000, help="at most this many meta-val classes")
    ap.add_argument("--images", type=int, default=15, help="held-out images a class")
    ap.add_argument("--samples", type=int, default=100, help="importance samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--also-train", action="store_true",
                    help="also score the meta-train classes (images beyond their first K, binarized once)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    train, val = load_split(args.prepared, "train"), load_split(args.prepared, "val")
    train_classes, val_classes = _classes(train), _classes(binarized_split(val, args.seed) if args.binarize else val)
    seen = _classes(binarized_split(train, args.seed) if args.binarize else train)
    channels, size = train.images.shape[1], train.images.shape[-1]
    out: dict = {"prepared": str(args.prepared), "arch": args.arch, "k": args.k, "samples": args.samples}
    for name, context in (("set", args.context_dim), ("plain", 0)):
        cfg = VAEConfig(channels, size, args.latent_dim, args.width, args.likelihood, 8, context, arch=args.arch)
        model = build_vae(cfg, args.seed)
        out[name] = {**_train(model, train_classes, args, context > 0),
                     **_held_out(model, val_classes, args, context > 0)}
        if args.also_train:
            out[name]["meta_train"] = _held_out(model, seen, args, context > 0)
    out["gain_nats"] = out["plain"]["nll_nats"] - out["set"]["nll_nats"]
    if args.also_train:
        out["meta_train_gain_nats"] = out["plain"]["meta_train"]["nll_nats"] - out["set"]["meta_train"]["nll_nats"]
    out["gain_percent"] = 100 * out["gain_nats"] / out["plain"]["nll_nats"]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
