"""What a generator was trained on, as far as its inputs go: channels, size, brightness and which
side is the background. Logged with the model; a support set far from it gets a warning (a model
trained on white-on-black digits, given black-on-white characters, returns grey blobs)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _border(images: np.ndarray) -> np.ndarray:
    """Each image's mean over its outermost rows and columns: its background."""
    top, bottom = images[:, :, 0, :], images[:, :, -1, :]
    left, right = images[:, :, :, 0], images[:, :, :, -1]
    return np.concatenate([top, bottom, left, right], axis=-1).mean(axis=(1, 2))


def data_facts(images: np.ndarray) -> dict[str, Any]:
    """``images``: (N, C, H, W) in [0, 1], the training images."""
    background = float(_border(images).mean())
    return {"channels": int(images.shape[1]), "image_size": int(images.shape[-1]),
            "mean": round(float(images.mean()), 4), "background": round(background, 4),
            "polarity": "light on a dark background" if background < 0.5 else "dark on a light background"}


def far_from_training(support: np.ndarray, facts: dict[str, Any] | None) -> str | None:
    """Why ``support`` looks unlike the training images (None: it does not, or nothing is known)."""
    if not facts:
        return None
    background = float(_border(support).mean())
    if (background < 0.5) != (facts["background"] < 0.5):
        now = "light on a dark background" if background < 0.5 else "dark on a light background"
        return (f"the support images are {now} (background {background:.2f}), the model was trained on images "
                f"{facts['polarity']} (background {facts['background']:.2f}): expect poor samples; invert them?")
    mean = float(support.mean())
    if abs(mean - facts["mean"]) > 0.25:
        return (f"the support images' mean brightness {mean:.2f} is far from the training images' "
                f"{facts['mean']:.2f}: expect poor samples")
    return None
