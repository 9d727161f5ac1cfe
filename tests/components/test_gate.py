"""The promotion gate as a pure function: rows and intervals in, conditions out. No server."""

from __future__ import annotations

import numpy as np
import pytest

from components.errors import MetagenError
from components.evaluation.bootstrap import FidUnits, Interval
from components.gate import GateRules, Row, against_champion, champion_condition, own_conditions

RULES = GateRules(sampling="support", fid_threshold=20.0, max_copy_rate=0.1, require_beats_baselines=True)


def _iv(fid: float, other: float, half: float) -> Interval:
    d = fid - other
    return Interval(fid, other, d - half, d + half, 0.95)


def _verdict(fid: float, copy: float = 0.0, pretrain: float = 12.0, half: float = 1.0, rules: GateRules = RULES):
    rows = [Row("meta", "support", fid, copy), Row("pretrain", "prior", pretrain + 3, 0.0),
            Row("pretrain", "support", pretrain, 0.02), Row("scratch", "support", 1.0, 0.6),
            Row("support_replay", "replay", 0.5, 1.0)]
    intervals = {("pretrain", "support"): _iv(fid, pretrain, half), ("pretrain", "prior"): _iv(fid, pretrain + 3, half)}
    return own_conditions(rows, intervals, rules)


def test_a_clear_win_passes_and_says_so_with_its_interval() -> None:
    v = _verdict(8.0)
    assert v.passed
    assert "FID 8.00 vs pretrain (support) 12.00: difference -4.00 [-5.00, -3.00] (90% interval): better (pass)" in v.reason
    assert "scratch excluded: a copier (copy_rate 0.600 > 0.1)" in v.reason
    assert "support_replay excluded: a copier" in v.reason


def test_a_tie_is_reported_as_a_tie_and_does_not_pass() -> None:
    v = _verdict(11.5, half=2.0)  # lower, but inside the noise
    assert not v.passed
    assert v.failed == ("FID 11.50 vs pretrain (support) 12.00: difference -0.50 [-2.50, +1.50] (90% interval): "
                        "not better",)


def test_a_clear_loss_is_worse() -> None:
    v = _verdict(15.0)
    assert not v.passed and "difference +3.00 [+2.00, +4.00] (90% interval): worse" in v.reason


def test_threshold_copy_rate_and_the_minimum_improvement() -> None:
    assert "FID 25.00 > registry.fid_threshold 20 (FAIL)" in _verdict(25.0, pretrain=30.0).reason
    assert "copy_rate 0.500 > registry.max_copy_rate 0.1 (FAIL)" in _verdict(8.0, copy=0.5).reason
    strict = GateRules("support", 20.0, 0.1, True, min_improvement=0.5)
    v = _verdict(8.0, rules=strict)  # 33% lower, 50% asked
    assert not v.passed and "better, but by less than 50% (FAIL)" in v.reason


def test_baselines_can_be_reported_without_being_required() -> None:
    lenient = GateRules("support", 20.0, 0.1, require_beats_baselines=False)
    v = _verdict(15.0, rules=lenient)
    assert v.passed and "worse [not required: registry.require_beats_baselines false] (pass)" in v.reason


def test_the_champion_comparison_and_missing_pieces() -> None:
    c = champion_condition("3", _iv(9.0, 9.2, 0.5), RULES)
    assert not c.ok and c.text.startswith("FID 9.00 vs champion v3 9.20: difference -0.20")
    with pytest.raises(MetagenError, match="no FID interval for pretrain"):
        own_conditions([Row("meta", "support", 1.0, 0.0), Row("pretrain", "support", 2.0, 0.0)], {}, RULES)
    with pytest.raises(MetagenError, match="no row for the meta-model's 'support'"):
        own_conditions([Row("meta", "prior", 1.0, 0.0)], {}, RULES)


def _units(shift: float, extractor: str = "x", seed: int = 0):
    rng = np.random.default_rng(seed)
    real = [[rng.normal(size=(40, 4)) for _ in range(6)] for _ in range(2)]
    model = [[rng.normal(size=(40, 4)) + shift for _ in range(6)] for _ in range(2)]
    return FidUnits(extractor, "p", model, real)


def test_the_champion_comparison_is_a_paired_bootstrap_and_a_tie_keeps_the_champion() -> None:
    ours, far, same = _units(0.1), _units(1.5, seed=1), _units(0.1, seed=2)
    worse = FidUnits("x", "p", far.model, ours.real)  # a champion scored on the same real features
    iv, c = against_champion("1", ours, worse, RULES)
    assert c.ok and iv.high < 0 and iv.fid < iv.other_fid and "champion v1" in c.text
    iv, c = against_champion("1", ours, FidUnits("x", "p", same.model, ours.real), RULES)
    assert not c.ok and iv.low < 0 < iv.high  # a draw from the same distribution: a tie
    with pytest.raises(MetagenError, match="champion v1's FID units are under other digests"):
        against_champion("1", ours, _units(1.5, extractor="other"), RULES)
