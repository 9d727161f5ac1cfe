"""The meta-model's meta-val FID and copy rate at each sampling temperature (and its NLL at each
fine-tuning lr, as the evaluation's choice measures it): the evaluation's own
settings choice (``choose_meta_settings``, the seeded ``eval.lr_choice_classes`` meta-val classes,
the extractor and copy measure of the checkpoint's params), the meta-model alone, at the given
temperatures and fine-tuning lrs; the references are not needed. Decide settings here, on
meta-val, never on meta-test. Prints JSON. Run in a project that trained (prepared/, features/,
checkpoints/). Example:

    python experiments/sampling_temperature/run.py --temperatures 0.8 0.6 0.4 0.25 0.1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from components.evaluation.evaluate import choose_meta_settings, eval_context
from components.meta.adaptation import AdaptationRule
from components.meta.generators import MetaGenerator
from components.meta.trainer import load_learner
from components.params import Params
from components.threads import figure_threads, torch_threads


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("checkpoints/checkpoint.pt"))
    ap.add_argument("--prepared", type=Path, default=Path("prepared"))
    ap.add_argument("--features", type=Path, default=Path("features"), help="the extractor's folder (eval.features_dir)")
    ap.add_argument("--temperatures", type=float, nargs="+", required=True)
    ap.add_argument("--finetune-lrs", type=float, nargs="+", default=[0.0], help="Adam lrs of the fine-tuning (0: none)")
    ap.add_argument("--no-nll", action="store_true", help="skip each lr's meta-val NLL (eval.nll_choice_images)")
    ap.add_argument("--spatial-temperature", type=float, default=None,
                    help="the ladder's grids' noise scale (eval.spatial_temperature; default: the checkpoint's)")
    ap.add_argument("--choice-classes", type=int, default=None,
                    help="meta-val classes of the choice (eval.lr_choice_classes; default: the checkpoint's)")
    args = ap.parse_args(argv)
    restored = load_learner(args.checkpoint)
    params = Params.model_validate(restored.params)
    ev = params.eval.model_copy(update={"temperatures": args.temperatures, "finetune_lrs": args.finetune_lrs,
                                        **({"nll_choice_images": 0} if args.no_nll else {}),
                                        **({"lr_choice_classes": args.choice_classes} if args.choice_classes else {}),
                                        **({"spatial_temperature": args.spatial_temperature}
                                           if args.spatial_temperature is not None else {})})
    params = params.model_copy(update={"eval": ev})
    t0 = time.perf_counter()
    with torch_threads(figure_threads(params.train)):  # the evaluation's threads: its figures
        ctx = eval_context(params, args.prepared, args.features)
        meta = MetaGenerator(restored.learner, AdaptationRule.from_params(params))
        chosen, table = choose_meta_settings(meta, ctx.choice, ctx.extractor, ctx.protocol,
                                             params.registry.max_copy_rate)
    print(json.dumps({"checkpoint": str(args.checkpoint), "meta_val_classes": len(ctx.choice.classes),
                      "spatial_temperature": ev.spatial_temperature,
                      "extractor": ctx.extractor.name, "max_copy_rate": params.registry.max_copy_rate,
                      "chosen": {"lr": chosen.lr, "temperature": chosen.temperature},
                      "candidates": table["candidates"], "seconds": round(time.perf_counter() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
