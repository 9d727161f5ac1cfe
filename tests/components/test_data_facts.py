"""What a model was trained on, and the warning for supports unlike it."""

from __future__ import annotations

import numpy as np

from components.serving.data_facts import data_facts, far_from_training


def _strokes(n: int, seed: int) -> np.ndarray:
    """Light strokes on a dark background (as the digits and Omniglot are prepared)."""
    x = np.zeros((n, 1, 28, 28), np.float32)
    rng = np.random.default_rng(seed)
    for img in x:
        r, c = rng.integers(6, 22, 2)
        img[0, r - 4 : r + 4, c - 1 : c + 1] = 1.0
    return x


def test_the_facts_of_light_strokes_on_dark() -> None:
    facts = data_facts(_strokes(20, 0))
    assert facts["channels"] == 1 and facts["image_size"] == 28
    assert facts["background"] == 0.0 and facts["polarity"] == "light on a dark background"


def test_supports_like_the_training_images_pass_and_inverted_ones_are_named() -> None:
    facts = data_facts(_strokes(20, 0))
    assert far_from_training(_strokes(5, 1), facts) is None
    warning = far_from_training(1.0 - _strokes(5, 1), facts)
    assert warning and "dark on a light background" in warning and "invert" in warning
    grey = np.full((5, 1, 28, 28), 0.45, np.float32)  # dark enough a background, far too bright overall
    assert "mean brightness 0.45" in far_from_training(grey, facts)
    assert far_from_training(_strokes(5, 1), None) is None  # a model logged before the facts were
