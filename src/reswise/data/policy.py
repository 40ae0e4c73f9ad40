"""Resolution policies: how a decoded uint8 image becomes an r x r network input.

* ``full`` (small-image datasets such as CIFAR): the whole image is resized to r x r.
* ``crop`` (ImageNet evaluation): the short side is resized to round(r / crop_pct), then an
  r x r centre crop is taken (the torchvision/timm eval preset).

Resizing runs on whole uint8 batches with ``F.interpolate`` (PyTorch has uint8 kernels for
bilinear/bicubic with antialiasing that track PIL closely), so there is no per-image Python
loop for same-size images; variable-size images are resized one by one in C++ calls.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ReswiseError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")


@dataclass(frozen=True)
class ResizePolicy:
    kind: str = "full"  # "full" or "crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    antialias: bool = True  # only bilinear/bicubic have antialiased kernels

    def __post_init__(self) -> None:
        if self.kind not in ("full", "crop"):
            raise ReswiseError(f"resize policy must be 'full' or 'crop', got '{self.kind}'")
        if self.interpolation not in INTERPOLATIONS:
            raise ReswiseError(
                f"unknown interpolation '{self.interpolation}'; valid: {', '.join(INTERPOLATIONS)}"
            )
        if not 0.05 < self.crop_pct <= 1.0:
            raise ReswiseError(f"--crop-pct must be in (0.05, 1], got {self.crop_pct}")

    def describe(self) -> str:
        aa = (
            " + antialias"
            if self.antialias and self.interpolation in ("bilinear", "bicubic")
            else ""
        )
        if self.kind == "full":
            return f"whole image resized to r x r ({self.interpolation}{aa})"
        return f"short side to round(r / {self.crop_pct}), centre crop r x r ({self.interpolation}{aa})"

    def _interp(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        mode = self.interpolation
        if mode == "area":  # no uint8 kernel: float, then back to uint8 like PIL would store it
            y = F.interpolate(x.float(), size=size, mode="area")
            return y.round_().clamp_(0, 255).to(torch.uint8)
        kw = {"antialias": self.antialias} if mode in ("bilinear", "bicubic") else {}
        if mode in ("bilinear", "bicubic"):
            kw["align_corners"] = False
        return F.interpolate(x, size=size, mode=mode, **kw)

    def _crop_one(self, x: torch.Tensor, r: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = round(r / self.crop_pct)
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        x = self._interp(x, (nh, nw))
        top, left = int(round((nh - r) / 2.0)), int(round((nw - r) / 2.0))
        return x[..., top : top + r, left : left + r]

    def __call__(self, images: torch.Tensor | list[torch.Tensor], r: int) -> torch.Tensor:
        """Resize a uint8 batch (``B x 3 x H x W`` tensor or list of ``3 x H x W``) to ``B x 3 x r x r``."""
        if isinstance(images, torch.Tensor):
            if self.kind == "full":
                return self._interp(images, (r, r))
            return self._crop_one(images, r)
        if self.kind == "full":
            return torch.stack([self._interp(im[None], (r, r))[0] for im in images])
        return torch.stack([self._crop_one(im[None], r)[0] for im in images])


def normalizer(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift that turn uint8 pixels into normalised floats in one fused op."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return 1.0 / (255.0 * s), -m / s


def to_input(
    x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor], channels_last: bool = False
) -> torch.Tensor:
    scale, shift = scale_shift
    y = torch.addcmul(shift, x.float(), scale)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def parse_resolutions(
    text: str | list[int] | tuple[int, ...], flag: str = "--resolutions"
) -> list[int]:
    """'32,28,24' -> [32, 28, 24]; with a clear error naming ``flag`` for anything else."""
    if isinstance(text, (list, tuple)):  # from Python: whole numbers only (24.0 is 24)
        whole = [
            int(v)
            for v in text
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer()
        ]
        if len(whole) != len(text):
            raise ReswiseError(f"{flag} must be whole numbers of pixels, got {list(text)}")
        vals = whole
    else:
        try:
            vals = [int(t) for t in str(text).replace(" ", "").split(",") if t]
        except ValueError:
            raise ReswiseError(
                f"{flag} must be a comma-separated list of integers, got '{text}'"
            ) from None
    if not vals:
        raise ReswiseError(f"{flag} is empty; give e.g. {flag} 32,28,24")
    bad = [v for v in vals if v <= 0]
    if bad:
        raise ReswiseError(f"{flag}: resolutions must be positive, got {bad[0]}")
    if len(set(vals)) != len(vals):
        raise ReswiseError(f"{flag} lists a resolution twice: {text}")
    return vals
