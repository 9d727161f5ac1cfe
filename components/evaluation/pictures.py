"""Pictures: sample grids (torchvision's make_grid / save_image), FID bars, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import make_grid

from components.atomic import atomic_file

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def sample_grid(supports: list[Tensor], samples: list[Tensor], per_row: int) -> Tensor:
    """One row per class: its K support images, a blank, then ``per_row`` generated images."""
    rows = []
    for sup, gen in zip(supports, samples, strict=True):
        blank = torch.ones_like(sup[:1])
        rows.append(torch.cat([sup, blank, gen[:per_row]]))
    ncol = max(len(r) for r in rows)
    padded = [torch.cat([r, torch.ones_like(r[:1]).repeat(ncol - len(r), 1, 1, 1)]) for r in rows]
    return make_grid(torch.cat(padded), nrow=ncol, padding=2, pad_value=0.5)


def grid_image(grid: Tensor, title: str | None = None, scale: int = 3) -> Image.Image:
    """A grid (float in [0, 1] or uint8, C x H x W) enlarged ``scale`` times (nearest neighbour,
    so pixels stay crisp), under a title: what the reports and the MLflow UI show."""
    if grid.dtype != torch.uint8:
        grid = (grid.clamp(0, 1) * 255).round().byte()
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr if arr.shape[2] == 3 else arr[:, :, 0]).convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    if title:
        canvas = Image.new("RGB", (img.width, img.height + 22), "white")
        canvas.paste(img, (0, 22))
        ImageDraw.Draw(canvas).text((4, 5), title, fill="black")
        img = canvas
    return img


def save_grid(path: Path, grid: Tensor, title: str | None = None, scale: int = 3) -> Path:
    img = grid_image(grid, title, scale)
    with atomic_file(path) as tmp:
        img.save(tmp, format="png")
    return path


def fid_bar_chart(path: Path, rows: list[dict[str, Any]]) -> Path:
    labels = [f"{r['model']}\n{r['sampling']}" for r in rows]
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2, 3.5))
    ax.bar(labels, [r["fid_mean"] for r in rows], yerr=[r["fid_std"] for r in rows], capsize=4, color="#4c72b0")
    ax.set_ylabel("few-shot FID (lower is better)")
    ax.set_title("FID on meta-test classes")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def loss_curve(path: Path, history: list[dict[str, float]]) -> Path | None:
    vals = [(h["step"], h["val_loss"], h.get("val_loss_unadapted")) for h in history if "val_loss" in h]
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    if not vals and not train:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    if train:
        ax[0].plot([s for s, _ in train], [v for _, v in train])
        ax[0].set_title("meta-train outer loss (nats/pixel)")
        ax[0].set_xlabel("meta-step")
    if vals:
        ax[1].plot([s for s, _, _ in vals], [v for _, v, _ in vals], marker="o", label="after adaptation")
        if all(u is not None for _, _, u in vals):
            ax[1].plot([s for s, _, _ in vals], [u for _, _, u in vals], marker="x", label="unadapted")
        ax[1].set_title("meta-val query -ELBO (nats/image)")
        ax[1].set_xlabel("meta-step")
        ax[1].legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def selection_chart(path: Path, selection: dict[str, Any], max_copy_rate: float) -> Path | None:
    """Every model's candidate settings on meta-val, FID against copy rate (one line per model and
    sampling mode, one point per (lr, temperature)), the copy limit and each choice: what the choice
    traded and where each model's fine-tuning starts to copy. ``selection``: name -> mode -> settings."""
    models = {f"{name} ({mode})": s for name, by_mode in selection.items() for mode, s in by_mode.items()
              if s.get("candidates")}
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, s in models.items():
        pts = sorted((c["copy_rate"], c["fid"]) for c in s["candidates"])
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", alpha=0.7, label=name)[0]
        best = next(c for c in s["candidates"] if c["lr"] == s["lr"] and c["temperature"] == s["temperature"])
        ax.scatter([best["copy_rate"]], [best["fid"]], s=120, facecolors="none", edgecolors=line.get_color())
    ax.axvline(max_copy_rate, color="grey", linestyle="--", label=f"copy limit {max_copy_rate:g}")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=0)
    ax.set_yscale("log")
    ax.set_xlabel("copy rate (meta-val)")
    ax.set_ylabel("FID (meta-val)")
    ax.set_title("each model's fine-tuning lr x temperature candidates; circled: chosen")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
