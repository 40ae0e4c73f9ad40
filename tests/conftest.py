"""Shared fixtures: small real-format datasets written by the tests, and ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(os.environ.get("RESWISE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg"
IMAGENET_SAMPLE = SHARED / "datasets" / "imagenet-sample" / "val"
R56 = SHARED / "weights" / "cifar10-resnet" / "resnet56-4bfd9763.th"

needs_shared = pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason=f"{CIFAR_JPEG} not present")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # decoded-image caches of one test must not leak into another
    monkeypatch.setenv("RESWISE_CACHE", str(tmp_path_factory.mktemp("cache")))


def make_imagefolder(
    root: Path, n_per_class: int = 6, classes: int = 3, size=(32, 32), fmt: str = "png", seed=0
) -> Path:
    """Write a tiny ImageFolder tree of random-but-structured images."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            w, h = size if not callable(size) else size(i)
            base = np.zeros((h, w, 3), np.uint8)
            base[..., c % 3] = 200  # class colour, so even a tiny model can separate them
            img = np.clip(base + rng.integers(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.{fmt}")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "data")


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A plain state_dict of a seeded, untrained CIFAR ResNet-20 (no class names carried)."""
    import torch

    from reswise.models.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    p = tmp_path / "r20.pt"
    torch.save(CifarResNet(20).state_dict(), p)
    return p
