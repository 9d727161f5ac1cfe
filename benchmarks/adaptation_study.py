"""Which way of adapting moves the generator toward a new class? A small, honest study.

Trains each variant (algorithm x adapted parameters x inner steps) in-process for the same number
of meta-steps on the prepared digits, then runs the few-shot protocol on the meta-test classes for
the meta-model only, next to the `pretrain` and `scratch` baselines (chosen on meta-val as in
`metagen evaluate`). Prints one JSON document.

    python benchmarks/adaptation_study.py [--steps 300] [--repeats 2] [--params params.yaml]

Reads the domain extractor of the project's `features` stage (`dvc repro features` first).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAIN = ["model.context_dim=0"]  # the unconditional VAE: whole-network adaptation, for comparison
VARIANTS = {
    "set-maml-context-3": ["meta.algorithm=maml", "meta.adapt_scope=context", "meta.inner_steps=3"],
    "set-fomaml-context-3": ["meta.algorithm=fomaml", "meta.adapt_scope=context", "meta.inner_steps=3"],
    "set-metasgd-film-1": ["meta.algorithm=metasgd", "meta.adapt_scope=film", "meta.inner_steps=1"],
    "set-reptile-5": ["meta.algorithm=reptile", "meta.inner_steps=5", "meta.inner_lr=0.5", "meta.outer_lr=0.003"],
    "set-maml-context-0": ["meta.algorithm=maml", "meta.adapt_scope=context", "meta.inner_steps=0",
                           "eval.adapt_steps=0"],
    "maml-all-3": [*PLAIN, "meta.algorithm=maml", "meta.adapt_scope=all", "meta.inner_steps=3"],
    "maml-decoder-3": [*PLAIN, "meta.algorithm=maml", "meta.adapt_scope=decoder", "meta.inner_steps=3"],
    "fomaml-all-5": [*PLAIN, "meta.algorithm=fomaml", "meta.adapt_scope=all", "meta.inner_steps=5"],
    "metasgd-all-1": [*PLAIN, "meta.algorithm=metasgd", "meta.adapt_scope=all", "meta.inner_steps=1"],
    "reptile-all-5": [*PLAIN, "meta.algorithm=reptile", "meta.inner_steps=5", "meta.inner_lr=0.5", "meta.outer_lr=0.003"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prepared", default=str(ROOT / "prepared"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--features", default=str(ROOT / "features"))
    args = ap.parse_args()
    import torch

    from components.evaluation.evaluate import evaluate
    from components.meta.adaptation import AdaptationRule
    from components.meta.trainer import train_local
    from components.params import load_params

    torch.set_num_threads(2)
    prepared = Path(args.prepared)
    common = [f"train.steps={args.steps}", f"train.val_every={args.steps}", f"eval.repeats={args.repeats}"]
    out: dict = {"steps": args.steps, "repeats": args.repeats, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="metagen-study-") as tmp:
        baselines_done = False
        for name, overrides in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            params = load_params(args.params, [*common, *overrides])
            t0 = time.perf_counter()
            result = train_local(params, prepared, Path(tmp) / name, progress=False)
            train_s = time.perf_counter() - t0
            from components.meta.trainer import load_learner

            learner = load_learner(result.checkpoint).learner
            ev = evaluate(learner, AdaptationRule.from_params(params), params, prepared, Path(tmp) / f"{name}-report",
                          Path(args.features), Path(tmp) / "cache", baselines=not baselines_done)
            for row in ev.report["rows"]:
                if row["model"] == "meta":
                    out["variants"].setdefault(name, {})[row["sampling"]] = {
                        k: row[k] for k in ("nll_mean", "fid_mean", "fid_std", "precision", "recall", "copy_rate",
                                            "aug_acc_mean", "adapt_lr", "temperature")}
                elif not baselines_done:
                    out.setdefault("baselines", {})[f"{row['model']}/{row['sampling']}"] = {
                        k: row[k] for k in ("nll_mean", "fid_mean", "fid_std", "precision", "recall", "copy_rate",
                                            "aug_acc_mean", "adapt_lr", "temperature")}
            out["variants"][name]["train_s"] = round(train_s, 1)
            out["variants"][name]["final_val_loss"] = result.final_val_loss
            baselines_done = True
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
