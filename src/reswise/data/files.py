"""Reading image files one by one or in batches, with every way a file can be bad turned into a
one-line reason: corrupt bytes, symbolic-link loops, dangling links, decompression bombs.

An image over PIL's pixel limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89 M pixels by default) is
refused by its header size before any pixel is decoded: PIL itself only warns up to twice the
limit and then decodes, a 500 MB allocation for a 13 500 x 13 500 image.
"""

from __future__ import annotations

import errno
import hashlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

SMALL_PIXELS = 128 * 128  # the batched, one-tensor path holds images up to this size
# what reading a bad file raises: PIL's own (SyntaxError, EOFError for truncated data) included
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError)
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageTooLarge(ValueError):
    """An image over PIL's decompression-bomb pixel limit."""

    def __init__(self, size: tuple[int, int] | None, pixels: int | None = None):
        what = f"{size[0]} x {size[1]}" if size else f"{pixels or 'too many'}"
        super().__init__(f"image too large: {what} pixels")


def _check_size(size: tuple[int, int]) -> None:
    limit = Image.MAX_IMAGE_PIXELS  # read each time: callers may change it, as PIL documents
    if limit is not None and size[0] * size[1] > limit:
        raise ImageTooLarge(size)


def _header_size(path: str) -> tuple[int, int] | None:
    """The size a file's header claims, read the way ``Image.open`` does but without its bomb
    check (which raises before the size can be seen)."""
    Image.init()
    with open(path, "rb") as fp:
        prefix = fp.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            ok = not accept or accept(prefix)
            if not ok or isinstance(ok, str):
                continue
            try:
                fp.seek(0)
                return tuple(factory(fp, path).size)  # type: ignore[return-value]
            except Exception:  # any plugin may fail on another format's bytes
                continue
    return None


def open_image(path: str) -> Image.Image:
    """Open a file lazily (header only); raise :class:`ImageTooLarge` over the pixel limit."""
    try:
        im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(_header_size(path)) from None
    try:
        _check_size(im.size)
    except ImageTooLarge:
        im.close()
        raise
    return im


@contextmanager
def quiet_bomb_warnings() -> Iterator[None]:
    """PIL's warning is redundant under :func:`open_image`'s own check. Single-threaded callers
    only: ``warnings.catch_warnings`` is process-wide state."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def decode_image(path: str) -> torch.Tensor:
    """Decode one file to a ``3 x H x W`` uint8 RGB tensor (PIL, as torchvision's ImageFolder)."""
    with open_image(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def describe_failure(path: str, e: BaseException) -> str:
    """One line saying why ``path`` could not be read."""
    if isinstance(e, ImageTooLarge):
        return str(e)
    if isinstance(e, OSError) and e.errno == errno.ELOOP:
        return "symbolic link loop"
    if os.path.islink(path) and not os.path.exists(path):
        return f"dangling symbolic link (to {os.readlink(path)})"
    return f"{e.__class__.__name__}: {str(e)[:80]}"


def decode_checked(path: str) -> tuple[torch.Tensor | None, str]:
    try:
        return decode_image(path), ""
    except READ_ERRORS as e:
        return None, describe_failure(path, e)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker, or None when it has none in order."""
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in _SOF:
            h = int.from_bytes(bytes(data[i + 5 : i + 7]), "big")
            return int.from_bytes(bytes(data[i + 7 : i + 9]), "big"), h
        elif marker in (0xD9, 0xDA):  # end of image / scan data before any frame header
            return None
        else:
            i += 2 + int.from_bytes(bytes(data[i + 2 : i + 4]), "big")
    return None


def _read_small_jpeg(path: str) -> torch.Tensor | None:
    """The file's bytes when its header says it is a small JPEG (safe to batch-decode)."""
    from torchvision.io import read_file

    try:
        data = read_file(path)
    except (RuntimeError, OSError):
        return None
    # the frame header sits after the APP segments (EXIF, ICC): 64 kB covers small images'
    size = jpeg_size(data[:65536].numpy().tobytes())
    return data if size is not None and size[0] * size[1] <= SMALL_PIXELS else None


def decode_many(paths: list[str]) -> list[tuple[torch.Tensor | None, str]]:
    """Decode small images fast: JPEGs in one batched libjpeg-turbo call, the rest with PIL.

    Measured here on 3 000 CIFAR JPEGs: 0.08 s batched vs 0.36 s PIL (serial; a thread pool is
    slower still for tiny images), with bit-identical pixels. Only JPEGs whose header says they
    are small are batched (libjpeg has no pixel limit); the others, and every file of a batch
    that fails, go through PIL one by one, so a bad file is found and named.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[tuple[torch.Tensor | None, str]] = [(None, "")] * len(paths)
    done = set()
    jpegs = [i for i, p in enumerate(paths) if p.lower().endswith((".jpg", ".jpeg"))]
    for start in range(0, len(jpegs), 4096):
        part, data = [], []
        try:
            # torchvision 0.29 deprecates its decoders for torchcodec and warns on every call;
            # they are still the fastest batched CPU JPEG path here, so say it once (README)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                for i in jpegs[start : start + 4096]:
                    if (b := _read_small_jpeg(paths[i])) is not None:
                        part.append(i)
                        data.append(b)
                imgs = decode_jpeg(data, mode=ImageReadMode.RGB) if data else []
            for i, im in zip(part, imgs):
                out[i] = (im, "")
            done.update(part)
        except (RuntimeError, ValueError, OSError):
            pass  # PIL below, file by file
    with quiet_bomb_warnings():
        for i, p in enumerate(paths):
            if i not in done:
                out[i] = decode_checked(p)
    return out


def same_small_size(paths: list[str]) -> bool:
    """Peek at a few images: one size everywhere and small -> decode all into one tensor."""
    sizes = set()
    with quiet_bomb_warnings():
        for p in paths[:: max(1, len(paths) // 16)][:16]:
            try:
                with open_image(p) as im:
                    sizes.add(im.size)
            except READ_ERRORS:
                pass
    return len(sizes) == 1 and next(iter(sizes))[0] * next(iter(sizes))[1] <= SMALL_PIXELS


def files_key(paths: list[str]) -> str:
    """Names, sizes and modification times: a changed file is decoded again."""
    key = hashlib.sha1()
    for p in paths:
        try:
            st = os.stat(p)
            key.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError as e:  # a broken link: part of the key, so fixing it decodes again
            key.update(f"{p}|{e.errno}\n".encode())
    return key.hexdigest()


def check_paths(paths: list[str]) -> tuple[list[int], list[tuple[str, str]]]:
    """Open (header only) and verify every file: (indices of good files, [(bad path, why)])."""
    good, skipped = [], []
    with quiet_bomb_warnings():
        for i, p in enumerate(paths):
            try:
                with open_image(p) as im:
                    im.verify()
                good.append(i)
            except READ_ERRORS as e:
                skipped.append((p, describe_failure(p, e)))
    return good, skipped
