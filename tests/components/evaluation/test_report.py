"""The markdown report states how the ladder sampled when its grids have their own temperature."""

from __future__ import annotations

from components.evaluation.report import markdown_table


def _report(spatial: float | None) -> dict:
    protocol = {"k_shot": 5, "repeats": 3, "test_classes": ["a", "b"], "digest": "d",
                **({"spatial_temperature": spatial} if spatial is not None else {})}
    return {"extractor": {"name": "inception", "digest": "x"}, "protocol": protocol, "rows": [], "best": {}}


def test_the_spatial_temperature_is_stated_only_when_set() -> None:
    assert "spatial temperature 0;" in markdown_table(_report(0.0))
    assert "spatial temperature" not in markdown_table(_report(None))
