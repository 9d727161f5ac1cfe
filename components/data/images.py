"""Decoding one image file safely and converting it to the training format."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})


class BadImageError(DataError):
    """The file is not a decodable image (it may be skipped by ``data.on_bad_image: skip``)."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


BACKGROUND = 255  # transparent pixels are composited on white (ink-on-paper data: Omniglot, digits)
HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def _to_8bit_mode(img: Image.Image, channels: int) -> tuple[Image.Image, str | None]:
    """``img`` in ``L`` or ``RGB``, and what had to be done beyond a plain mode change (for the
    manifest): 16-bit (or 32-bit integer) grey rescaled from its full range, not clipped at 255;
    transparency (alpha, or a palette's transparent colour) composited on white, not dropped."""
    note = None
    if img.mode in HIGH_DEPTH or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        top = HIGH_DEPTH.get(img.mode) or (65535.0 if arr.max(initial=0) > 255 else 255.0)
        img = Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
        note = "16-bit grey rescaled to 8 bits" if top > 255 else None
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
        img = Image.alpha_composite(background, rgba)
        note = "transparency composited on white"
    return img.convert("L" if channels == 1 else "RGB"), note


def load_image(path: Path, channels: int, size: int, max_pixels: int) -> np.ndarray:
    """Decode ``path`` to float32 ``(channels, size, size)`` in [0, 1] (see :func:`load_image_noted`)."""
    return load_image_noted(path, channels, size, max_pixels)[0]


def load_image_noted(path: Path, channels: int, size: int, max_pixels: int) -> tuple[np.ndarray, str | None]:
    """Decode ``path`` to float32 ``(channels, size, size)`` in [0, 1], and the conversion note.

    16-bit grey keeps its full range; transparent pixels are composited on white
    (:data:`BACKGROUND`). Square centre crop, then an antialiased resize. Images over
    ``max_pixels`` are refused before their pixels are decoded (decompression bombs) with a
    :class:`DataError`; undecodable files raise :class:`BadImageError`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise DataError(
                        f"{path}: image of {width}x{height} = {width * height} pixels exceeds "
                        f"data.max_image_pixels ({max_pixels}); refused as a possible decompression bomb"
                    )
                img.load()
                img, note = _to_8bit_mode(img, channels)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{path}: refused as a decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{path}: not a readable image ({err.__class__.__name__}: {err})") from None
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if channels == 1:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), note
