"""The promotion gate as a pure function: the evaluation's rows and intervals and the rules in, a
decision with each condition stated in figures out. The registry (:mod:`components.registry`)
only reads and writes MLflow around it.

A version passes when its FID is under the threshold, it does not copy its supports, and it is
better, beyond the noise, than every baseline that does not copy and than the champion: the
paired bootstrap interval of the FID difference (:mod:`components.evaluation.bootstrap`) lies
below zero, and the difference is at least ``min_improvement`` of the other's FID. A difference
whose interval holds zero is a tie, and a tie does not promote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.errors import MetagenError
from components.evaluation.bootstrap import FidUnits, Interval, compare, fid_units
from components.params import EvalParams, RegistryParams

META = "meta"


@dataclass(frozen=True)
class GateRules:
    sampling: str
    fid_threshold: float
    max_copy_rate: float
    require_beats_baselines: bool
    min_improvement: float = 0.0  # relative: the FID must be lower by at least this share of the other's
    bootstrap_samples: int = 1000   # of the champion comparison (the baselines' come with the report)
    confidence: float = 0.95
    seed: int = 0
    require_approval: bool = False  # a version that passes waits for a person (metagen approve)

    @classmethod
    def from_params(cls, registry: RegistryParams, ev: EvalParams) -> GateRules:
        return cls(ev.sampling, registry.fid_threshold, registry.max_copy_rate, registry.require_beats_baselines,
                   registry.min_improvement, ev.bootstrap_samples, ev.confidence, ev.seed, registry.require_approval)


@dataclass(frozen=True)
class Row:
    """One line of the evaluation table, as far as the gate reads it."""

    model: str
    sampling: str
    fid: float
    copy_rate: float

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Row:
        return cls(str(row["model"]), str(row["sampling"]), float(row["fid_mean"]), float(row["copy_rate"]))


def rows_of(report: Mapping[str, Any]) -> list[Row]:
    return [Row.from_dict(r) for r in report["rows"]]


def meta_row(rows: Sequence[Row], sampling: str) -> Row:
    """The gated row: the meta-model in the configured sampling mode."""
    for row in rows:
        if row.model == META and row.sampling == sampling:
            return row
    raise MetagenError(f"the evaluation report has no row for the meta-model's {sampling!r} sampling")


def intervals_of(report: Mapping[str, Any]) -> dict[tuple[str, str], Interval]:
    """The report's bootstrap intervals of the meta-model's FID minus each other row's."""
    return {(c["model"], c["sampling"]): Interval.from_dict(c) for c in report.get("comparisons", [])}


@dataclass(frozen=True)
class Condition:
    text: str
    ok: bool


@dataclass(frozen=True)
class Verdict:
    conditions: tuple[Condition, ...]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.conditions)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.text for c in self.conditions if not c.ok)

    @property
    def reason(self) -> str:
        return "; ".join(f"{c.text} ({'pass' if c.ok else 'FAIL'})" for c in self.conditions)

    def plus(self, *more: Condition) -> Verdict:
        return Verdict(self.conditions + more)


def is_better(iv: Interval, min_improvement: float) -> bool:
    """Lower beyond the noise (the interval's upper end below zero) and by at least the margin."""
    return iv.high < 0 and iv.difference <= -min_improvement * iv.other_fid


def compared(label: str, iv: Interval, min_improvement: float) -> Condition:
    """``FID 22.19 vs pretrain (support) 19.81: difference +2.38 [-3.10, +7.90]: not better``."""
    better = is_better(iv, min_improvement)
    word = "better" if better else ("worse" if iv.low > 0 else "not better")
    if not better and iv.high < 0:
        word = f"better, but by less than {min_improvement:.0%}"
    pct = round(100 * (1 - 2 * (1 - iv.confidence)))
    return Condition(f"FID {iv.fid:.2f} vs {label} {iv.other_fid:.2f}: difference {iv.difference:+.2f} "
                     f"[{iv.low:+.2f}, {iv.high:+.2f}] ({pct}% interval): {word}", better)


def own_conditions(rows: Sequence[Row], intervals: Mapping[tuple[str, str], Interval], rules: GateRules) -> Verdict:
    """The version's own conditions: threshold, copy rate, every non-copying baseline."""
    me = meta_row(rows, rules.sampling)
    out = [Condition(f"FID {me.fid:.2f} {'<=' if me.fid <= rules.fid_threshold else '>'} registry.fid_threshold "
                     f"{rules.fid_threshold:g}", me.fid == me.fid and me.fid <= rules.fid_threshold),
           Condition(f"copy_rate {me.copy_rate:.3f} {'<=' if me.copy_rate <= rules.max_copy_rate else '>'} "
                     f"registry.max_copy_rate {rules.max_copy_rate:g}", me.copy_rate <= rules.max_copy_rate)]
    note = "" if rules.require_beats_baselines else " [not required: registry.require_beats_baselines false]"
    for name in dict.fromkeys(r.model for r in rows if r.model != META):
        mine = [r for r in rows if r.model == name]
        honest = [r for r in mine if r.copy_rate <= rules.max_copy_rate]
        if not honest:
            worst = min(r.copy_rate for r in mine)
            out.append(Condition(f"{name} excluded: a copier (copy_rate {worst:.3f} > {rules.max_copy_rate:g}){note}",
                                 True))
            continue
        best = min(honest, key=lambda r: r.fid)
        iv = intervals.get((best.model, best.sampling))
        if iv is None:
            raise MetagenError(f"the evaluation report has no FID interval for {best.model} ({best.sampling}): "
                               "evaluate again with this version of metagen")
        c = compared(f"{name} ({best.sampling})", iv, rules.min_improvement)
        out.append(Condition(c.text + note, c.ok or not rules.require_beats_baselines))
    return Verdict(tuple(out))


def champion_condition(champion: str, iv: Interval, rules: GateRules) -> Condition:
    return compared(f"champion v{champion}", iv, rules.min_improvement)


def against_champion(champion: str, ours: FidUnits, theirs: FidUnits, rules: GateRules) -> tuple[Interval, Condition]:
    """The paired bootstrap of this version's FID against the champion's (both scored on the same
    extractor and protocol: refused otherwise) and the condition it makes."""
    if (theirs.extractor, theirs.protocol) != (ours.extractor, ours.protocol):
        raise MetagenError(f"champion v{champion}'s FID units are under other digests than this version's")
    iv = compare(fid_units(ours.model), {"champion": fid_units(theirs.model)}, fid_units(ours.real),
                 rules.bootstrap_samples, rules.seed, rules.confidence)["champion"]
    return iv, champion_condition(champion, iv, rules)
