"""How much the ``pretrain`` baseline's held-out likelihood moves with its initialisation: the
baseline trained from each ``train.seed`` given (the pipeline's own training, cached beside the
evaluation's as it caches it), then its NLL on the meta-test classes exactly as the evaluation
measures a row's (its repeats' episodes, held-out images, importance samples and proposal, the
fine-tuning lr the evaluation chose for its likelihood), in nats an image and bits per dimension.
With ``--meta`` the checkpoint's meta-model is scored the same way beside it. The seed of the
pipeline's run reproduces its table's row: the check that this is the same measure. With
``--split val`` the same measure on the meta-val people the settings choice reads (where a model
change is decided), at the ``--lrs`` given (each model's best of them is its figure). With
``--grad-clip N`` each baseline is trained here (not cached) with its gradient's norm clipped to
N instead of the pipeline's ``meta.grad_clip`` (before fb6a530 the pipeline did not clip it: on
faces its unclipped gradient spikes made the initialisation spread, docs/results/faces.md).

It chooses nothing: it says whether a likelihood margin between the meta-model and ``pretrain`` is
larger than what another initialisation of the baseline alone moves. Prints JSON. Run in a project
that evaluated (prepared/, checkpoints/, reports/eval.json). Example:

    python experiments/baseline_seeds/run.py --seeds 0 1 2 --meta
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from components.data.prepare import Split, load_split
from components.evaluation.evaluate import (
    EvalContext,
    baseline_vae_config,
    bits_per_dim,
    eval_context,
    reference_pretrain,
)
from components.evaluation.protocol import (
    ClassJob,
    adapt_class,
    class_seed,
    draw_episode,
    nll_seed,
    repeat_seeds,
)
from components.meta.adaptation import AdaptationRule
from components.meta.generators import (
    FewShotGenerator,
    FinetuneGenerator,
    MetaGenerator,
    pretrain_vae,
)
from components.meta.trainer import load_learner
from components.models.vae import ConvVAE, param_dict
from components.params import EvalParams, Params
from components.threads import figure_threads, torch_threads


def heldout_nll(gen: FewShotGenerator, ctx: EvalContext, ev: EvalParams, split: Split) -> dict[str, float]:
    """Mean over the repeats of the mean over classes, and its std over the repeats (a row's)."""
    per_repeat = []
    for seed in repeat_seeds(ctx.protocol):
        episode = draw_episode(split, ctx.protocol.k_shot, seed)
        nlls = [adapt_class([gen], ClassJob(0, torch.from_numpy(split.images[episode.supports[c]]),
                                            torch.from_numpy(split.images[episode.heldout[c][:ev.nll_max_images]]),
                                            ev.samples_per_class, (), ev.nll_samples, tuple(ev.nll_proposal_scales),
                                            class_seed(seed, c), nll_seed(seed, c), ctx.protocol.binarized)).nll
                for c in range(len(split.classes))]
        per_repeat.append(float(np.mean(nlls)))
    dims = int(np.prod(split.images.shape[1:]))
    mean, std = float(np.mean(per_repeat)), float(np.std(per_repeat))
    return {"nll_nats": mean, "nll_nats_std": std, "bits_per_dim": bits_per_dim(mean, dims),
            "bits_per_dim_std": bits_per_dim(std, dims)}


def clipped_pretrain(params: Params, prepared: Path, grad_clip: float) -> ConvVAE:
    """The ``pretrain`` baseline as the pipeline trains it, its gradient's norm clipped to ``grad_clip``."""
    t, train = params.train, load_split(prepared, "train")
    model, _ = pretrain_vae(baseline_vae_config(params, train), train.images, t.pretrain_steps, t.pretrain_batch_size,
                            params.eval.pretrain_lr, t.seed, params.model.binarize, t.lr_schedule, grad_clip)
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="train.seed of each pretrain baseline")
    ap.add_argument("--checkpoint", type=Path, default=Path("checkpoints/checkpoint.pt"))
    ap.add_argument("--prepared", type=Path, default=Path("prepared"))
    ap.add_argument("--features", type=Path, default=Path("features"), help="the extractor's folder (eval.features_dir)")
    ap.add_argument("--report", type=Path, default=Path("reports/eval.json"),
                    help="the evaluation's report: each model's likelihood lr")
    ap.add_argument("--meta", action="store_true", help="score the checkpoint's meta-model too")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="test: the evaluation's test classes; val: its settings choice's meta-val classes")
    ap.add_argument("--lrs", type=float, nargs="+", default=None,
                    help="fine-tuning lrs to score every model at (default: each model's likelihood lr in --report)")
    ap.add_argument("--grad-clip", type=float, default=None,
                    help="train each baseline here with its gradient norm clipped to this (default: the pipeline's meta.grad_clip, cached)")
    args = ap.parse_args(argv)
    restored = load_learner(args.checkpoint)
    params = Params.model_validate(restored.params)
    ev = params.eval
    rows = {} if args.lrs else {row["model"]: row for row in json.loads(args.report.read_text())["rows"]}
    t0 = time.perf_counter()
    out: dict = {"split": args.split, "classes": None, "repeats": ev.repeats, "grad_clip": args.grad_clip, "pretrain": {}}
    with torch_threads(figure_threads(params.train)):  # the evaluation's threads: its figures
        ctx = eval_context(params, args.prepared, args.features)
        split = ctx.test if args.split == "test" else ctx.choice
        out["classes"] = len(split.classes)

        def best(gen: FewShotGenerator, lrs: list[float]) -> dict:
            scored = [{"lr": lr, **heldout_nll(gen.with_settings(lr, ev.temperatures[0]), ctx, ev, split)} for lr in lrs]
            return {**min(scored, key=lambda r: r["nll_nats"]), "by_lr": scored}

        for seed in args.seeds:
            seeded = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
            model = (reference_pretrain(seeded, args.prepared, args.checkpoint.parent) if args.grad_clip is None
                     else clipped_pretrain(seeded, args.prepared, args.grad_clip))
            gen = FinetuneGenerator("pretrain", model, param_dict(model), ev.finetune_steps)
            out["pretrain"][str(seed)] = best(gen, args.lrs or [rows["pretrain"]["nll_lr"]])
        if args.meta:
            meta = MetaGenerator(restored.learner, AdaptationRule.from_params(params))
            out["meta"] = best(meta, args.lrs or [rows["meta"]["nll_lr"]])
    bpd = [v["bits_per_dim"] for v in out["pretrain"].values()]
    out["pretrain_spread_bits_per_dim"] = float(max(bpd) - min(bpd))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
