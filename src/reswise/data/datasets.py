"""Datasets as decoded uint8 images: decode once, then every resolution is made from memory.

Two sources share one interface (``len``, ``labels``, ``classes``, ``get(indices)`` -> uint8
images): :class:`TensorImages` keeps a whole small dataset as one ``N x 3 x H x W`` uint8
tensor (CIFAR-like data; airbench style), :class:`FileImages` decodes variable-size images
(ImageNet) chunk by chunk, each image exactly once per sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ReswiseError
from .files import check_paths, decode_image, decode_many, files_key, same_small_size

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DATASETS = ("cifar10", "imagefolder", "imagenet")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # the archive's published checksum
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def cache_dir() -> Path:
    base = (
        os.environ.get("RESWISE_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reswise"
    )
    return Path(base)


@dataclass
class TensorImages:
    """A dataset held in memory as one uint8 tensor ``N x 3 x H x W``.

    ``classes`` are always the folder names; ``labels`` index ``classes`` until
    :func:`reswise.data.align_labels` maps them to a model's classes, after which they index
    ``label_names`` (the model's class names, or None when it carries none) and
    ``label_mapping`` says how they were mapped.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    label_names: tuple[str, ...] | None = None
    label_mapping: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]

    def subset(self, indices: torch.Tensor) -> TensorImages:
        return dataclasses.replace(
            self, images=self.images[indices], labels=self.labels[indices], skipped=[]
        )

    def fingerprint(self) -> str:
        """A digest of the pixels and labels: equal for the same evaluated images and labels.

        blake2b over the raw uint8 bytes: the CIFAR-10 test set (30.7 MB) in 0.033 s here.
        """
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{tuple(self.images.shape)}|{len(self.labels)}".encode())
        h.update(self.images.detach().cpu().contiguous().numpy())
        h.update(self.labels.detach().cpu().to(torch.int64).contiguous().numpy())
        return h.hexdigest()


@dataclass
class FileImages:
    """Variable-size images on disk, decoded on demand (each exactly once per sweep).

    ``classes``, ``labels``, ``label_names`` and ``label_mapping`` as in :class:`TensorImages`.
    """

    paths: list[str]
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    workers: int = 4
    label_names: tuple[str, ...] | None = None
    label_mapping: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: torch.Tensor) -> list[torch.Tensor]:
        with ThreadPoolExecutor(self.workers) as pool:  # PIL releases the GIL while decoding
            return list(pool.map(lambda i: decode_image(self.paths[i]), indices.tolist()))

    def subset(self, indices: torch.Tensor) -> FileImages:
        paths = [self.paths[i] for i in indices.tolist()]
        return dataclasses.replace(self, paths=paths, labels=self.labels[indices], skipped=[])

    def fingerprint(self) -> str:
        """A digest of each file's absolute path, size and modification time, and the labels:
        it changes when a file is replaced or edited, without reading the pixels."""
        h = hashlib.blake2b(digest_size=8)
        for p in self.paths:
            try:
                st = os.stat(p)
                h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError as e:  # gone since loading: still a different set of images
                h.update(f"{os.path.abspath(p)}|{e.errno}\n".encode())
        h.update(self.labels.detach().cpu().to(torch.int64).contiguous().numpy())
        return h.hexdigest()


Dataset = TensorImages | FileImages


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def scan_imagefolder(
    root: str | Path, unlabelled: bool = False, flag: str = "--data-root"
) -> tuple[list[str], list[int], list[str]]:
    """Paths, folder-position labels and class folder names of ``root/<class>/*``.

    ``unlabelled``: a flat folder (images directly in ``root``, no class folders) is accepted
    too, with no classes and every label -1 (label-free training: ``train --specialists``).
    ``flag``: the option that named ``root``, for the errors (a user who typed --test-root
    looks for that, not for "data root").
    """
    root = Path(root)
    if not root.is_dir():
        raise ReswiseError(f"{flag} {root} is not a folder; pass {flag} DIR with DIR/<class>/*")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        flat = sorted(str(p) for p in root.iterdir() if _is_image(p.name) and p.is_file())
        if unlabelled and flat:
            return flat, [-1] * len(flat), []
        if unlabelled:  # images directly in it would do: no class folder is needed
            raise ReswiseError(
                f"{flag} {root} holds no image files ({', '.join(IMG_EXTENSIONS)}), directly or "
                "in class folders"
            )
        # only the training images of specialists may be flat; elsewhere the hint misleads
        hint = (
            " (a flat folder of images works for `train --specialists`)"
            if flat and flag == "--data-root"
            else ""
        )
        raise ReswiseError(
            f"{flag} {root} has no class folders; expected DIR/<class>/<image>{hint}"
        )
    paths, labels = [], []
    for i, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / c)):
            for f in sorted(files):
                if _is_image(f):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(i)
    if not paths:
        raise ReswiseError(f"{flag} {root} holds no image files ({', '.join(IMG_EXTENSIONS)})")
    return paths, labels, classes


def _select(paths: list[str], labels: list[int], limit: int | None, seed: int) -> list[int]:
    """A stratification-free but class-mixed subset: a seeded permutation, then the first `limit`."""
    order = list(range(len(paths)))
    if limit is not None and limit < len(paths):
        g = torch.Generator().manual_seed(seed)
        order = sorted(torch.randperm(len(paths), generator=g)[:limit].tolist())
    return order


def load_imagefolder(
    root: str | Path,
    limit: int | None = None,
    on_corrupt: str = "skip",
    use_cache: bool = True,
    seed: int = 0,
    workers: int = 4,
    unlabelled: bool = False,
    flag: str = "--data-root",
) -> Dataset:
    """Load ``root/<class>/*``. Same-size images (CIFAR-like) become one cached uint8 tensor.

    Corrupt or unreadable files (damaged bytes, symbolic-link loops, dangling links, images
    over PIL's pixel limit) are skipped and counted in ``skipped`` with a reason
    (``on_corrupt="skip"``, the default: a sweep over 50 000 images should not die on one bad
    file, and the count is reported) or stop the run with the file's name
    (``on_corrupt="error"``). Labels are folder positions: see :func:`reswise.data.align_labels`.
    """
    if on_corrupt not in ("skip", "error"):
        raise ReswiseError(f"on_corrupt must be 'skip' or 'error', got '{on_corrupt}'")
    paths, labels, classes = scan_imagefolder(root, unlabelled, flag)
    keep = _select(paths, labels, limit, seed)
    paths = [paths[i] for i in keep]
    labels = [labels[i] for i in keep]
    name = str(Path(root))

    files = FileImages(paths, torch.tensor(labels), classes, name, workers=workers)
    if not same_small_size(paths):
        return _check_files(files, on_corrupt)
    cache = cache_dir() / "decoded" / f"{files_key(paths)}.pt"
    if use_cache and cache.is_file():
        try:
            d = torch.load(cache, weights_only=True)
            skipped = list(zip(d["skipped_paths"], d["skipped_why"], strict=True))
            if skipped and on_corrupt == "error":
                _refuse(*skipped[0])
            return TensorImages(d["images"], d["labels"], classes, name, skipped)
        except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError):
            pass  # stale or broken cache: decode again
    decoded = decode_many(paths)
    skipped = [(p, why) for p, (img, why) in zip(paths, decoded, strict=True) if img is None]
    if skipped and on_corrupt == "error":
        _refuse(*skipped[0])
    if len({tuple(img.shape) for img, _ in decoded if img is not None}) != 1:
        return _check_files(files, on_corrupt)
    images = torch.stack([img for img, _ in decoded if img is not None])
    lab = torch.tensor(
        [lbl for lbl, (img, _) in zip(labels, decoded, strict=True) if img is not None]
    )
    if use_cache:
        _write_cache(cache, images, lab, skipped)
    return TensorImages(images, lab, classes, name, skipped)


def _write_cache(
    cache: Path, images: torch.Tensor, labels: torch.Tensor, skipped: list[tuple[str, str]]
) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    # a fresh temporary name per writer: runs started together decode one folder at once
    fd, tmp_name = tempfile.mkstemp(suffix=".tmp", prefix=cache.stem, dir=cache.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    torch.save(
        {
            "images": images,
            "labels": labels,
            "skipped_paths": [s[0] for s in skipped],
            "skipped_why": [s[1] for s in skipped],
        },
        tmp,
    )
    tmp.replace(cache)


def _check_files(imgs: FileImages, on_corrupt: str) -> FileImages:
    """Open (header only) every file once, so bad files are found before the model runs."""
    good, skipped = check_paths(imgs.paths)
    if skipped and on_corrupt == "error":
        _refuse(*skipped[0])
    if skipped:
        imgs = imgs.subset(torch.tensor(good, dtype=torch.long))
    imgs.skipped = skipped
    return imgs


def _refuse(path: str, why: str) -> None:
    raise ReswiseError(f"cannot decode image {path} ({why}); remove it or use --on-corrupt skip")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's official batches are pickles; allow only what they contain (no code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
        raise ReswiseError(
            f"CIFAR-10 batch {path} is corrupt ({e.__class__.__name__}); delete it to re-download"
        ) from None
    if len(data) != len(labels):
        raise ReswiseError(f"CIFAR-10 batch {path} has {len(data)} images but {len(labels)} labels")
    return {"data": data, "labels": labels}


def _download_cifar10(root: Path) -> None:
    archive = root / "cifar-10-python.tar.gz"
    root.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(CIFAR10_URL, str(archive), progress=True)
    except Exception as e:
        raise ReswiseError(
            f"CIFAR-10 not found under {root} and the download failed ({e.__class__.__name__}); "
            f"put cifar-10-batches-py/ there, or use --dataset imagefolder on a JPEG copy"
        ) from None
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    if md5 != CIFAR10_MD5:
        archive.unlink()
        raise ReswiseError(f"downloaded CIFAR-10 archive fails its md5 check ({md5}); try again")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")


def load_cifar10(
    root: str | Path,
    split: str = "test",
    limit: int | None = None,
    download: bool = True,
    seed: int = 0,
) -> TensorImages:
    """The official python-version CIFAR-10 (``cifar-10-batches-py``), downloaded when absent."""
    root = Path(root)
    base = root if (root / "batches.meta").exists() else root / "cifar-10-batches-py"
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    if split not in ("test", "train"):
        raise ReswiseError(f"CIFAR-10 split must be 'train' or 'test', got '{split}'")
    if not all((base / f).is_file() for f in files):
        if not download:
            raise ReswiseError(
                f"CIFAR-10 batches not found in {base}; put them there or call with download=True"
            )
        _download_cifar10(root)
        base = root / "cifar-10-batches-py"
    batches = [_read_batch(base / f) for f in files]
    images = torch.from_numpy(np.concatenate([b["data"] for b in batches]))
    labels = torch.from_numpy(np.concatenate([b["labels"] for b in batches]))
    ds = TensorImages(images, labels, list(CIFAR10_CLASSES), f"cifar10/{split}")
    if limit is not None and limit < len(ds):
        g = torch.Generator().manual_seed(seed)
        ds = ds.subset(torch.randperm(len(ds), generator=g)[:limit].sort().values)
    return ds


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    on_corrupt: str = "skip",
    seed: int = 0,
    unlabelled: bool = False,
    flag: str = "--data-root",
) -> Dataset:
    """Load a dataset by name: ``cifar10``, ``imagefolder`` or ``imagenet`` (ImageFolder val layout).

    ``unlabelled``: an ``imagefolder`` may be a flat folder of images (labels -1, no classes).
    ``flag``: the option that named ``root``, as the errors call it.
    """
    if name not in DATASETS:
        raise ReswiseError(f"unknown dataset '{name}'; valid names: {', '.join(DATASETS)}")
    if limit is not None and limit <= 0:
        raise ReswiseError(f"--limit must be a positive number of images, got {limit}")
    if name == "cifar10":
        return load_cifar10(root or cache_dir() / "cifar10", split, limit, seed=seed)
    if root is None:
        raise ReswiseError(f"dataset '{name}' needs --data-root DIR (DIR/<class>/<image>)")
    data = load_imagefolder(root, limit, on_corrupt, seed=seed, unlabelled=unlabelled, flag=flag)
    if name == "imagenet" and len(data.classes) != 1000:
        # labels are folder indices: with any other number of folders they would not line up
        # with the model's 1000 outputs and every accuracy would be silently wrong
        raise ReswiseError(
            f"imagenet layout needs the 1000 wnid class folders, found {len(data.classes)} in "
            f"{root}; use --dataset imagefolder for other trees"
        )
    return data


def save_cifar_batch(path: str | Path, images: np.ndarray, labels: list[int]) -> None:
    """Write a batch in the official format (used by tests and to export subsets)."""
    with open(path, "wb") as f:
        pickle.dump({b"data": images.reshape(len(images), -1), b"labels": labels}, f)
