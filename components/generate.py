"""`metagen generate`: a registered generator + K images of a new class -> a PNG grid of samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from components.atomic import atomic_file
from components.data.images import is_image_file, load_image
from components.errors import DataError, MetagenError


def load_support_folder(folder: Path, channels: int, size: int, max_pixels: int) -> np.ndarray:
    """The images in ``folder`` (any size and mode), converted like the training data."""
    if not folder.is_dir():
        raise DataError(f"support folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise DataError(f"{folder}: no PNG/JPEG/BMP images to adapt on")
    return np.stack([load_image(p, channels, size, max_pixels) for p in files])


def load_pyfunc(model_uri: str):  # noqa: ANN201
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        text = str(err)
        if "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "alias" in text.lower():
            from components.registry import missing_model

            raise missing_model(model_uri) from None
        raise MetagenError(f"cannot load {model_uri}: {err.message}") from None


def generate_grid(model_uri: str, support_dir: Path, n: int, out: Path, max_pixels: int, seed: int = 0) -> Path:
    model = load_pyfunc(model_uri)
    shape = model.metadata.get_input_schema().inputs[0].shape  # (-1, C, H, W)
    channels, size = int(shape[1]), int(shape[2])
    support = load_support_folder(Path(support_dir), channels, size, max_pixels).astype(np.float32)
    samples = np.asarray(model.predict(support, params={"n": int(n), "seed": int(seed)}))
    if samples.shape[1:] != support.shape[1:] or not np.isfinite(samples).all():
        raise MetagenError(f"{model_uri} returned {samples.shape} images (or NaNs); expected (n, {channels}, {size}, {size})")
    row = max(len(support), 8)
    grid = make_grid(torch.cat([torch.from_numpy(support), torch.from_numpy(samples)]), nrow=row, padding=2,
                     pad_value=0.5)
    out = Path(out)
    with atomic_file(out) as tmp:
        save_image(grid, tmp, format="png")
    return out
