"""bench_sweep.py on ImageNet: efficientnet_lite0 on the 1 000-image sample, 224..112.

    .venv/bin/python benchmarks/bench_imagenet.py [--repeats 3]

The naive way reads the JPEGs with a 2-worker DataLoader at batch 32 (resize the short side,
centre crop, as torchvision/timm evaluate); reswise decodes each image once per batch with its
own workers. Everything else (rounds, cold/warm cache, peak share) as in bench_sweep.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sweep import SHARED, main  # noqa: E402

if __name__ == "__main__":
    main(
        {
            "model": "efficientnet_lite0",
            "dataset": "imagenet",
            "data_root": str(SHARED / "datasets/imagenet-sample/val"),
            "resolutions": "224,196,168,140,112",
            "workers": 2,
            "naive_batch": 32,
        }
    )
