"""Feature extractors behind one interface: ``features(images) -> (n, d)`` and a ``digest``.

* ``domain``: a small CNN classifier trained on the meta-train classes only (dvc.yaml stage
  ``features``); its penultimate layer is the feature space.
* ``inception``: the standard FID Inception-v3 pool3 (2048-d): :mod:`components.evaluation.inception`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.atomic import atomic_file
from components.errors import MetagenError
from components.seeding import global_rng
from components.threads import torch_threads

log = logging.getLogger(__name__)


class FeatureExtractor(Protocol):
    name: str
    digest: str

    def features(self, images: Tensor) -> np.ndarray: ...


def state_digest(name: str, state: dict[str, Tensor]) -> str:
    h = hashlib.sha256(name.encode())
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- domain CNN ------------------------------------------------------------------------------------
class DomainCNN(nn.Module):
    """Four conv blocks (3x3, BatchNorm, ReLU, 2x2 max-pool), the few-shot literature's backbone (not
    meta-learned, so BatchNorm is safe here; evaluated in eval mode with its running statistics)."""

    def __init__(self, channels: int, num_classes: int, feature_dim: int = 128, width: int = 64) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = channels
        for _ in range(4):
            blocks += [nn.Conv2d(c_in, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c_in = width
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)
        # channels-last weights make every activation channels-last: the same arithmetic, but CPU
        # max-pooling and BatchNorm are vectorised in that layout (NCHW max-pool was 29% of a step):
        # a training step 1.5x (width 32) to 2x (width 64) faster, measured in benchmarks/fid.py
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def random_affine(x: Tensor, gen: torch.Generator, max_shift: float = 0.08, max_rotate: float = 0.15,
                  scale: tuple[float, float] = (0.9, 1.1)) -> Tensor:
    """Each image shifted (fraction of its size), rotated (radians) and scaled at random."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=gen, dtype=x.dtype)
    angle = (2 * u[:, 0] - 1) * max_rotate
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    tx, ty = (2 * u[:, 2] - 1) * max_shift * 2, (2 * u[:, 3] - 1) * max_shift * 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = x[:, :, :1, :1]  # the corner pixel's value fills what comes into view
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


def train_classifier(
    images: Tensor, labels: Tensor, num_classes: int, steps: int, seed: int, batch_size: int = 64, lr: float = 2e-3,
    augment: bool = False, width: int = 64,
) -> DomainCNN:
    """Adam on cross-entropy, seeded, cosine-decayed; shift augmentation, or random affine
    transforms (``augment``), so that a few images per class generalise."""
    gen = torch.Generator().manual_seed(seed)
    with global_rng(seed):
        net = DomainCNN(images.shape[1], num_classes, width=width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        x = images[idx]
        if augment:
            x = random_affine(x, gen)
        else:
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net


@torch.no_grad()
def accuracy(net: DomainCNN, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += int((net(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(len(images), 1)


@dataclass
class DomainExtractor:
    net: DomainCNN
    name: str = "domain"

    @property
    def digest(self) -> str:
        return state_digest(self.name, self.net.state_dict())

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 256) -> np.ndarray:
        self.net.eval()
        out = [self.net.body(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
        return torch.cat(out).double().numpy()


def save_domain_extractor(path: Path, net: DomainCNN, meta: dict) -> None:
    with atomic_file(path) as tmp:
        torch.save({"state": net.state_dict(), "meta": meta}, tmp)


def load_domain_extractor(path: Path) -> DomainExtractor:
    path = Path(path)
    if not path.is_file():
        raise MetagenError(f"domain feature extractor not found: {path} (run `dvc repro features` or `metagen features`)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    with global_rng():  # its initial weights draw from the global RNG, which a seeded build holds
        net = DomainCNN(int(meta["channels"]), int(meta["num_classes"]))
    net.load_state_dict(blob["state"])
    return DomainExtractor(net.eval())


def fit_domain_extractor(train_images: np.ndarray, train_labels: np.ndarray, steps: int, seed: int,
                         holdout: float = 0.2, threads: int = 0) -> tuple[DomainCNN, dict]:
    """Train on meta-train classes, holding out ``holdout`` of each class's images for accuracy;
    with ``threads`` torch threads (0: the process's): the weights depend on the thread count."""
    with torch_threads(threads):
        return _fit_domain_extractor(train_images, train_labels, steps, seed, holdout)


def _fit_domain_extractor(train_images: np.ndarray, train_labels: np.ndarray, steps: int, seed: int,
                          holdout: float) -> tuple[DomainCNN, dict]:
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(train_labels), dtype=bool)
    for c in np.unique(train_labels):
        idx = np.flatnonzero(train_labels == c)
        test_mask[rng.choice(idx, max(1, int(len(idx) * holdout)), replace=False)] = True
    x, y = torch.from_numpy(train_images), torch.from_numpy(train_labels)
    num_classes = int(train_labels.max()) + 1
    net = train_classifier(x[~test_mask], y[~test_mask], num_classes, steps, seed, augment=True)
    metrics = {
        "heldout_accuracy": accuracy(net, x[test_mask], y[test_mask]),
        "train_accuracy": accuracy(net, x[~test_mask], y[~test_mask]),
        "num_classes": num_classes,
        "heldout_images": int(test_mask.sum()),
        "steps": steps,
    }
    return net, metrics


def write_metrics(path: Path, metrics: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
