"""Request tensors and files to the graphs' uint8 ``N x 3 x H x W`` images, checked at the door.

A UINT8 tensor may be ``[N, H, W, 3]`` (decoded images as they come) or the graphs' own
``[N, 3, H, W]``; a BYTES tensor ``[N]`` (or ``[N, 1]``) holds encoded image files. Files are
decoded as the sweep and the runtime decode them (:func:`reswise.data.pixels.rgb8`: one
decoder, so the server sees the pixels ``OnnxCascade.classify_folder`` sees), and their size is
read from the header before any pixel: a file that is not the cascade's native size is refused,
so no large image (and no decompression bomb over Pillow's pixel limit) is ever decoded.
"""

from __future__ import annotations

import io

import numpy as np

from .protocol import BadRequest, Tensor


def _layouts(h: int, w: int) -> str:
    return f"UINT8 [N, {h}, {w}, 3] or [N, 3, {h}, {w}], or BYTES [N] holding JPEG/PNG files"


def images_from(t: Tensor, size: tuple[int, int]) -> np.ndarray:
    """The images in input ``t`` as contiguous uint8 ``N x 3 x H x W`` at ``size``."""
    h, w = size
    if t.datatype == "BYTES":
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
            raise BadRequest(f"BYTES input '{t.name}' has shape {t.shape}; send {_layouts(h, w)}")
        if not t.data:
            raise BadRequest(f"input '{t.name}' holds no images; send at least one")
        x = np.stack([decode_image(b, size, f"image {k}") for k, b in enumerate(t.data)])
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if t.datatype != "UINT8":
        raise BadRequest(
            f"input '{t.name}' is {t.datatype}; send {_layouts(h, w)} (0..255 pixels: the "
            "cascade normalises them itself)"
        )
    x = t.data
    if x.ndim == 4 and x.shape[1:] == (h, w, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4 or x.shape[1:] != (3, h, w):
        raise BadRequest(
            f"input '{t.name}' has shape {list(x.shape)}; send {_layouts(h, w)} (the size the "
            "cascade was exported for: resize the images first)"
        )
    if len(x) == 0:
        raise BadRequest(f"input '{t.name}' holds no images; send at least one")
    return np.ascontiguousarray(x)


def decode_image(data: bytes, size: tuple[int, int], what: str = "the image") -> np.ndarray:
    """One encoded file as ``H x W x 3`` uint8 RGB at ``size`` (``(height, width)``), or a
    :class:`BadRequest` naming what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    from ...data.pixels import READ_ERRORS, ImageTooLarge, check_size, quiet_bomb_warnings, rgb8

    h, w = size
    try:
        # the size check below refuses what Pillow would only warn about (the event loop's
        # thread is the only one decoding, as quiet_bomb_warnings needs)
        with quiet_bomb_warnings(), Image.open(io.BytesIO(data)) as im:  # the header only
            check_size(im.size)
            if im.size != (w, h):
                raise BadRequest(
                    f"{what} is {im.size[0]} x {im.size[1]} pixels; the cascade takes {w} x {h} "
                    "images: resize it first"
                )
            return rgb8(im)
    except (Image.DecompressionBombError, ImageTooLarge):
        raise BadRequest(
            f"{what} is over Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels (a decompression "
            f"bomb?); send {w} x {h} images"
        ) from None
    except UnidentifiedImageError:
        raise BadRequest(
            f"{what} is not an image file Pillow can read; send a whole JPEG or PNG file"
        ) from None
    except READ_ERRORS as e:
        raise BadRequest(
            f"cannot decode {what} ({e.__class__.__name__}: {str(e)[:80]}); send a whole "
            "JPEG or PNG file"
        ) from None
