"""Image files to 8-bit RGB pixels, with numpy and Pillow alone: the one decoder the sweep
(:mod:`reswise.data.files`) and the torch-free runtime (:mod:`reswise.ship.runtime`) share, so
both see the same pixels, and the one decompression-bomb check both apply.

Pillow's own ``convert("RGB")`` clips 16-bit and 32-bit integer pixels to 255 (a 16-bit
grayscale PNG became all white: 10.25 % top-1 where its 8-bit copy gives 83.75 %), so
:func:`rgb8` scales those itself. An image over Pillow's pixel limit
(``PIL.Image.MAX_IMAGE_PIXELS``, 89 M pixels by default) is refused by its header size before
any pixel is decoded: Pillow itself only warns up to twice the limit and then decodes, a
500 MB allocation for a 13 500 x 13 500 image.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

# what reading a bad file raises: Pillow's own (SyntaxError, EOFError for truncated data) and
# ours (ImageTooLarge, UnsupportedPixels: ValueErrors) included
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError)
WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # integer pixels over 8 bits


class ImageTooLarge(ValueError):
    """An image over Pillow's decompression-bomb pixel limit."""

    def __init__(self, size: tuple[int, int] | None, pixels: int | None = None):
        self.size = size
        what = f"{size[0]} x {size[1]}" if size else f"{pixels or 'too many'}"
        super().__init__(f"image too large: {what} pixels")


class UnsupportedPixels(ValueError):
    """Pixels with no one right 8-bit reading (floats, integers outside 16 bits)."""


def check_size(size: tuple[int, int]) -> None:
    """Raise :class:`ImageTooLarge` when ``size`` is over Pillow's pixel limit."""
    limit = Image.MAX_IMAGE_PIXELS  # read each time: callers may change it, as Pillow documents
    if limit is not None and size[0] * size[1] > limit:
        raise ImageTooLarge(size)


def header_size(path: str) -> tuple[int, int] | None:
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
        raise ImageTooLarge(header_size(path)) from None
    try:
        check_size(im.size)
    except ImageTooLarge:
        im.close()
        raise
    return im


@contextmanager
def quiet_bomb_warnings() -> Iterator[None]:
    """Pillow's warning is redundant under :func:`open_image`'s own check. Single-threaded
    callers only: ``warnings.catch_warnings`` is process-wide state."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _wide_to_gray8(im: Image.Image) -> np.ndarray:
    """16-bit (``I;16*``) or 32-bit integer (``I``) pixels read as 16-bit data, 0..65535 scaled
    to 0..255 and rounded (v * 255 / 65535): x * 257 becomes x again. Pillow opens a 16-bit
    PNG as ``I;16`` (``I`` in older versions) and a 16-bit PGM/PPM as ``I``."""
    a = np.asarray(im)
    if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
        raise UnsupportedPixels(
            f"{im.mode} pixels {int(a.min())}..{int(a.max())} lie outside 16 bits (0..65535); "
            "save the image as 8- or 16-bit"
        )
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def rgb8(im: Image.Image) -> np.ndarray:
    """An opened image's pixels as an ``H x W x 3`` uint8 RGB array (a fresh, writable copy).

    * 16-bit and 32-bit integer grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``):
      0..65535 scaled to 0..255, rounded, not clipped; values outside 0..65535 are refused.
    * Float pixels (``F``) are refused (:class:`UnsupportedPixels`): a float image has no
      range of its own (0..1, 0..255 and HDR all occur), and a guess would be silently wrong.
    * Alpha (``LA``, ``RGBA``, ``PA``, palette transparency) is dropped, not composited, as
      torchvision's ``pil_loader`` (``convert("RGB")``) does: colour channels as stored.
      Premultiplied ``La`` / ``RGBa`` are un-premultiplied first (Pillow's conversion).
    * Everything else (``1``, ``L``, ``P``, ``CMYK`` (Adobe-inverted JPEGs are un-inverted by
      Pillow on open), ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``) is Pillow's ``convert("RGB")``.
    """
    if im.mode in WIDE_MODES:
        return np.repeat(_wide_to_gray8(im)[..., None], 3, axis=2)
    if im.mode == "F":
        raise UnsupportedPixels(
            "float pixels (mode F) have no fixed range (0..1? 0..255?); save the image as "
            "8- or 16-bit integers"
        )
    if im.mode == "La":  # Pillow converts La to LA only
        im = im.convert("LA")
    return np.array(im if im.mode == "RGB" else im.convert("RGB"))


def read_rgb8(path: str) -> np.ndarray:
    """Decode one file to ``H x W x 3`` uint8 RGB (:func:`rgb8`) after the size check of
    :func:`open_image`; raises one of ``READ_ERRORS``."""
    with open_image(path) as im:
        return rgb8(im)
