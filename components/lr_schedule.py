"""The learning rate over a training: one rule for the meta-model and the ``pretrain`` baseline.

``constant`` keeps the configured rate; ``cosine`` lowers it from the configured rate to zero along
half a cosine over the run's steps (Loshchilov and Hutter 2017, without restarts; NVAE trains
with it). A pure function of the step, so a resumed training gets the rate it would have had.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine"]


def lr_factor(schedule: Schedule, step: int, total: int) -> float:
    """The share of the configured rate at ``step`` (0-based, the step about to be taken) of ``total``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    raise ValueError(f"train.lr_schedule must be constant or cosine, got {schedule!r}")
