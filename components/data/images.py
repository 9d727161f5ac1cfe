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


def load_image(path: Path, channels: int, size: int, max_pixels: int) -> np.ndarray:
    """Decode ``path`` to float32 ``(channels, size, size)`` in [0, 1].

    Square centre crop, then an antialiased resize. Images over ``max_pixels`` are refused before
    their pixels are decoded (decompression bombs) with a :class:`DataError`; undecodable files
    raise :class:`BadImageError`.
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
                img = img.convert("L" if channels == 1 else "RGB")
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
    return np.ascontiguousarray(arr)
