"""The comparison table as markdown (the JSON report is the source of truth)."""

from __future__ import annotations

from typing import Any


def _pm(mean: float | None, std: float | None, fmt: str) -> str:
    if mean is None or mean != mean:  # None or NaN
        return "–"
    return f"{mean:{fmt}} ± {std:{fmt}}"


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None or value != value else f"{value:{fmt}}"


def markdown_table(report: dict[str, Any]) -> str:
    ext = report["extractor"]
    acc = ext.get("heldout_accuracy")
    lines = [
        f"Few-shot evaluation (K={report['protocol']['k_shot']}, {report['protocol']['repeats']} repeats, "
        f"{len(report['protocol']['test_classes'])} test classes, extractor {ext['name']} {ext['digest']}"
        + (f" with held-out accuracy {acc:.3f}" if acc is not None else "")
        + f", protocol {report['protocol']['digest']})",
        *([f"NLL: {report['nll']}."] if report.get("nll") else []),
        *([f"Sampling: the ladder's grids at spatial temperature {spatial:g}; the temperature column scales the "
           "latents above them."] if (spatial := report["protocol"].get("spatial_temperature")) is not None else []),
        "",
        "| model | sampling | adapt steps | fine-tune lr | temperature | NLL (nats) ↓ | FID ↓ | KID ↓ | precision ↑ | "
        "recall ↑ | density ↑ | coverage ↑ | copy rate ↓ | augmentation acc ↑ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lr = _f(r["adapt_lr"], "g")
        nll_lr = r.get("nll_lr", r["adapt_lr"])
        at = f" (at lr {_f(nll_lr, 'g')})" if r["nll_mean"] is not None and nll_lr != r["adapt_lr"] else ""
        lines.append(
            f"| {r['model']} | {r['sampling']} | {r['adapt_steps']} | {lr} | {_f(r.get('temperature'), 'g')} | "
            f"{_pm(r['nll_mean'], r['nll_std'], '.1f')}{at}"
            + (f" ({_pm(r['nll_bpd_mean'], r['nll_bpd_std'], '.3f')} bits/dim)" if r.get("nll_bpd_mean") is not None else "")
            + " | "
            f"{_pm(r['fid_mean'], r['fid_std'], '.2f')} | {_pm(r['kid_mean'], r['kid_std'], '.4f')} | "
            f"{_f(r['precision'], '.3f')} | {_f(r['recall'], '.3f')} | {_f(r['density'], '.3f')} | "
            f"{_f(r['coverage'], '.3f')} | {_f(r['copy_rate'], '.3f')} | {_pm(r['aug_acc_mean'], r['aug_acc_std'], '.3f')} |"
        )
    lines += ["", "Lowest FID per sampling mode: " + ", ".join(f"{k}: **{v}**" for k, v in report["best"].items()), ""]
    lines += _inception_score_lines(report.get("inception_score"))
    return "\n".join(lines)


def _inception_score_lines(scores: dict[str, Any] | None) -> list[str]:
    if not scores:
        return []
    if "unavailable" in scores:
        return [f"Inception Score: not computed ({scores['unavailable']}).", ""]
    return ["Inception Score ↑ (10 splits): " + ", ".join(
        f"{name} ({mode}) {s['mean']:.2f} ± {s['std']:.2f}" for name, by_mode in scores.items() for mode, s in by_mode.items()), ""]


def gate_markdown(decision: str, reason: str) -> str:
    """The gate's decision and each of its conditions with its numbers, one per line."""
    return "\n".join([f"**{decision}** by the promotion gate:", "",
                      *(f"- {condition}" for condition in reason.split("; ")), ""])


def run_summary(report: dict[str, Any], decision: dict[str, Any], model_name: str) -> str:
    """A retrain run's description: the comparison with every baseline, then the gate."""
    verdict = ("promoted to `champion`" if decision["decision"] == "promoted"
               else f"not promoted (champion stays v{decision['champion_after']})" if decision["champion_after"]
               else "not promoted (no champion yet)")
    return "\n".join([f"## {model_name} v{decision['version']}: {verdict}", "", markdown_table(report),
                      gate_markdown(decision["decision"], decision["reason"])])
