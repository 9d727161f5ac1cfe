"""The comparison table as markdown (the JSON report is the source of truth)."""

from __future__ import annotations

from typing import Any


def _pm(mean: float | None, std: float | None, fmt: str) -> str:
    if mean is None:
        return "–"
    return f"{mean:{fmt}} ± {std:{fmt}}"


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        f"Few-shot evaluation (K={report['protocol']['k_shot']}, {report['protocol']['repeats']} repeats, "
        f"extractor {report['extractor']['name']} {report['extractor']['digest']}, protocol {report['protocol']['digest']})",
        "",
        "| model | sampling | adapt steps | adapt lr | FID ↓ | KID ↓ | query -ELBO (nats) ↓ | augmentation acc ↑ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lr = "–" if r["adapt_lr"] is None else f"{r['adapt_lr']:g}"
        lines.append(
            f"| {r['model']} | {r['sampling']} | {r['adapt_steps']} | {lr} | {_pm(r['fid_mean'], r['fid_std'], '.2f')} | "
            f"{_pm(r['kid_mean'], r['kid_std'], '.4f')} | {_pm(r['query_nll_mean'], r['query_nll_std'], '.1f')} | "
            f"{_pm(r['aug_acc_mean'], r['aug_acc_std'], '.3f')} |"
        )
    lines += ["", "Lowest FID per sampling mode: " + ", ".join(f"{k}: **{v}**" for k, v in report["best"].items()), ""]
    return "\n".join(lines)
