"""Amortised inference alone against gradient steps on the class context (CAVIA) at adaptation.

For a trained checkpoint, the held-out NLL (IWAE, nats per image) of the meta-val classes after
``steps`` SGD steps on the set encoder's context at each ``lr`` (0 steps: the set encoder's
context as it is, amortised inference) and, with ``--finetune-lrs``, the Adam fine-tuning on the
supports at each lr in each ``--set-finetune`` mode (joint: every support under the context of
all K; leave_one_out: under the other K - 1's). Settings are decided here on meta-val, never on
meta-test. Prints JSON (progress on stderr). Example:

    python experiments/context_steps/run.py --checkpoint checkpoints --prepared prepared \\
        --steps 0 3 12 --lrs 1 10
    python experiments/context_steps/run.py --checkpoint checkpoints --prepared prepared \\
        --steps 0 --images 15 --finetune-lrs 0 2e-5 1e-4 --set-finetune joint leave_one_out
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from components.data.binarize import binarized_split
from components.data.prepare import load_split
from components.evaluation.protocol import draw_episode
from components.meta.adaptation import AdaptationRule
from components.meta.trainer import load_learner
from components.models.vae import iwae_nll
from components.params import SET_FINETUNES, Params


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint directory or file")
    ap.add_argument("--prepared", type=Path, required=True, help="the prepared data directory")
    ap.add_argument("--split", default="val", choices=("val", "train"), help="classes to score (never test)")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 3, 12], help="context steps to compare")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1.0, 10.0], help="SGD lrs of the context steps")
    ap.add_argument("--classes", type=int, default=21, help="at most this many classes")
    ap.add_argument("--images", type=int, default=5, help="held-out images a class")
    ap.add_argument("--samples", type=int, default=100, help="importance samples")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--finetune-lrs", type=float, nargs="+", default=[0.0], help="Adam lrs of the fine-tuning (0: none)")
    ap.add_argument("--finetune-steps", type=int, default=20, help="Adam steps of the fine-tuning")
    ap.add_argument("--set-finetune", nargs="+", default=["joint"], choices=SET_FINETUNES,
                    help="how the supports are scored in the fine-tuning")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    restored = load_learner(args.checkpoint)
    restored.params["eval"].setdefault("set_finetune", "joint")  # a checkpoint from before these fields
    restored.params["model"].setdefault("context_warp", False)
    params = Params.model_validate(restored.params)
    split = load_split(args.prepared, args.split)
    if params.model.binarize:
        split = binarized_split(split, params.eval.seed)
    episode = draw_episode(split, params.meta.k_shot, args.seed)
    base = AdaptationRule.for_training(params.meta)
    model, weights = restored.learner.model, restored.learner.params()
    out: dict = {"checkpoint": str(args.checkpoint), "split": args.split, "samples": args.samples, "nll": {}}
    for steps in args.steps:
        for lr in (args.lrs if steps else args.lrs[:1]):
            for ft_lr in args.finetune_lrs:
                for mode in (args.set_finetune if ft_lr else args.set_finetune[:1]):
                    rule = replace(base, steps=steps, inner_lr=lr, learned_lrs=False, finetune_steps=args.finetune_steps,
                                   finetune_lr=ft_lr, set_finetune=mode)
                    per_class = []
                    for c in range(min(args.classes, len(split.classes))):
                        gen = torch.Generator().manual_seed(args.seed + c)
                        support = torch.from_numpy(split.images[episode.supports[c]])
                        fast = rule.adapt(model, weights, None, support, gen)
                        held = torch.from_numpy(split.images[episode.heldout[c][: args.images]])
                        per_class.append(float(iwae_nll(model, fast, held, args.samples, gen,
                                                        tuple(params.eval.nll_proposal_scales)).mean()))
                    key = "amortised" if steps == 0 else f"{steps} steps at lr {lr:g}"
                    if ft_lr:
                        key += f", fine-tuned {args.finetune_steps} steps at lr {ft_lr:g} ({mode})"
                    out["nll"][key] = {"mean": round(float(np.mean(per_class)), 2),
                                       "sem": round(float(np.std(per_class, ddof=1) / np.sqrt(len(per_class))), 2)}
                    print(key, out["nll"][key], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
