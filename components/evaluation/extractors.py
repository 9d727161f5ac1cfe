"""Feature extractors behind one interface: ``features(images) -> (n, d)`` and a ``digest``.

* ``domain``: a small CNN classifier trained on the meta-train classes only (dvc.yaml stage
  ``features``); its penultimate layer is the feature space.
* ``inception``: the standard FID Inception-v3 pool3 (2048-d) built from pytorch-fid's blocks, with
  weights read from a local file; never downloaded.
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
from pytorch_fid import inception as pfi
from torch import Tensor, nn
from torchvision.models.inception import inception_v3

from components.atomic import atomic_file
from components.errors import MetagenError
from components.threads import torch_threads

log = logging.getLogger(__name__)
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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


# --- Inception (standard FID) -------------------------------------------------------------------
def inception_weights_path(configured: str | None) -> Path:
    """The local weights file: ``eval.inception_weights`` or torch hub's cache; never downloads."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise MetagenError(
                f"eval.inception_weights: file not found: {path}. Put pytorch-fid's {INCEPTION_FILE} there "
                "(nothing is downloaded at run time)"
            )
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        raise MetagenError(
            f"standard FID needs the Inception weights {INCEPTION_FILE}: put the file at {path} or set "
            "eval.inception_weights to its path (nothing is downloaded at run time); "
            "or use eval.extractor: domain"
        )
    return path


def build_fid_inception() -> nn.Module:
    """pytorch-fid's FID Inception-v3 architecture, without weights (no download)."""
    net = inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


@dataclass
class InceptionExtractor:
    net: nn.Module
    weights_digest: str
    name: str = "inception"

    @property
    def digest(self) -> str:
        return self.weights_digest

    @torch.no_grad()
    def _pool_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        n = self.net
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            x = getattr(n, name)(x)
        x = F.max_pool2d(x, 3, 2)
        x = n.Conv2d_3b_1x1(x)
        x = n.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, 3, 2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return pool, n.fc(pool)

    def features(self, images: Tensor, batch_size: int = 32) -> np.ndarray:
        self.net.eval()
        return torch.cat([self._pool_and_logits(images[i : i + batch_size])[0]
                          for i in range(0, len(images), batch_size)]).double().numpy()

    def inception_score(self, images: Tensor, splits: int = 10, batch_size: int = 32) -> tuple[float, float]:
        logits = torch.cat([self._pool_and_logits(images[i : i + batch_size])[1]
                            for i in range(0, len(images), batch_size)]).double()
        probs = F.softmax(logits, dim=1).numpy()
        scores = []
        for part in np.array_split(probs, min(splits, len(probs))):
            py = part.mean(0, keepdims=True)
            kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(1).mean()
            scores.append(np.exp(kl))
        return float(np.mean(scores)), float(np.std(scores))


def load_inception_extractor(configured: str | None) -> InceptionExtractor:
    path = inception_weights_path(configured)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = build_fid_inception()
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise MetagenError(f"{path}: not pytorch-fid's FID Inception weights ({str(err)[:200]})") from None
    return InceptionExtractor(net.eval(), state_digest("inception", state))
