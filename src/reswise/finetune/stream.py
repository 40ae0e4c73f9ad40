"""Training batches from a folder of variable-size images, decoded per step (bounded memory).

Same-size folders (CIFAR) are held as one uint8 tensor and augmented on whole batches
(``train.augment``); a folder of large or variable-size images (ImageNet-like) cannot be, so
each image is decoded when its batch is drawn, by DataLoader workers, with the train-time
augmentation of ImageNet training (timm, torchvision): random-resized-crop to the largest
training resolution (scale 0.08-1, aspect 3/4-4/3, bilinear + antialias) and a horizontal
flip. Every draw comes from a generator seeded by (seed, epoch, image), so a run and its
resumed copy see the same crops whatever the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..data import FileImages
from ..data.pixels import read_rgb8

SCALE = (0.08, 1.0)  # share of the image's area a crop covers (torchvision's default)
RATIO = (3 / 4, 4 / 3)  # its aspect ratio, drawn log-uniformly


def random_resized_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop on one uint8 ``3 x H x W`` image, drawn from ``g``
    (torchvision draws from the global RNG, which workers and resumes do not share)."""
    _, h, w = x.shape
    area = h * w
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(*SCALE, generator=g))
        log_r = torch.empty(1).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=g)
        aspect = math.exp(float(log_r))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            break
    else:  # no draw fitted: the central crop at the nearest allowed aspect, as torchvision does
        if w / h < RATIO[0]:
            cw, ch = w, min(h, round(w / RATIO[0]))
        elif w / h > RATIO[1]:
            cw, ch = min(w, round(h * RATIO[1])), h
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[None, :, top : top + ch, left : left + cw]
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]


class StreamingFolder(torch.utils.data.Dataset):
    """Item i: image i decoded, random-resized-cropped to ``size``, maybe flipped; uint8."""

    def __init__(self, data: FileImages, size: int, seed: int, epoch: int) -> None:
        self.paths, self.labels = data.paths, data.labels
        self.size, self.seed, self.epoch = size, seed, epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & (2**63 - 1))
        x = torch.from_numpy(read_rgb8(self.paths[i])).permute(2, 0, 1)
        x = random_resized_crop(x, self.size, g)
        if float(torch.rand(1, generator=g)) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


def stream_batches(
    data: FileImages,
    size: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    workers: int,
    device: torch.device,
    start: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of augmented float batches (0..255, ``B x 3 x size x size``) and labels, in a
    seeded order; the last partial batch included. ``start``: the first batch (a resumed
    epoch); ``shard=(rank, world)``: only every world-th image of each batch from rank, so
    each process decodes its own share."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 7919 * epoch))
    rank, world = shard
    steps = range(start * batch_size, len(data), batch_size)
    loader = torch.utils.data.DataLoader(
        StreamingFolder(data, size, seed, epoch),
        batch_sampler=[order[s : s + batch_size][rank::world].tolist() for s in steps],
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True).float(), yb.to(device, non_blocking=True)
