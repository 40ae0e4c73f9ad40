"""Bad files inside a data folder or passed as a checkpoint: skipped and counted, or one line."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from reswise import ReswiseError, create_model, load_dataset
from reswise.data import FileImages, TensorImages
from reswise.models.cifar_resnet import CifarResNet

from .conftest import make_imagefolder

VARIABLE = {"size": lambda i: (60 + 8 * i, 48)}  # every image a different size: FileImages


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def _add_bad_links(root) -> tuple[str, str]:
    loop = root / "class0" / "loop.jpg"
    os.symlink(loop.name, loop)  # points at itself: ELOOP on open
    dangling = root / "class2" / "gone.jpg"
    os.symlink(root / "nowhere.jpg", dangling)
    return str(loop), str(dangling)


@pytest.mark.parametrize("layout", ["same_size", "variable_size"])
def test_symlink_loops_and_dangling_links_are_skipped_and_counted(tmp_path, layout):
    kw = VARIABLE if layout == "variable_size" else {}
    root = make_imagefolder(tmp_path / "d", fmt="jpg", **kw)
    loop, dangling = _add_bad_links(root)
    d = load_dataset("imagefolder", root)
    assert isinstance(d, TensorImages if layout == "same_size" else FileImages)
    assert len(d) == 18 and d.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    why = dict(d.skipped)
    assert sorted(why) == sorted([loop, dangling])
    assert "symbolic link loop" in why[loop] and "dangling symbolic link" in why[dangling]
    with pytest.raises(ReswiseError) as e:
        load_dataset("imagefolder", root, on_corrupt="error")
    assert "loop.jpg" in _one_line(e) and "--on-corrupt skip" in str(e.value)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose header (SOF0) claims another size: what PIL and libjpeg see
    before decoding, without writing a 500 MB image."""
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("layout", ["same_size", "variable_size"])
def test_decompression_bomb_jpeg_is_skipped_as_too_large(tmp_path, layout):
    kw = VARIABLE if layout == "variable_size" else {}
    root = make_imagefolder(tmp_path / "d", fmt="jpg", **kw)
    bomb = root / "class1" / "bomb.jpg"
    bomb.write_bytes(_jpeg_claiming(13500, 13500))
    d = load_dataset("imagefolder", root)
    assert isinstance(d, TensorImages if layout == "same_size" else FileImages)
    assert len(d) == 18 and d.skipped == [(str(bomb), "image too large: 13500 x 13500 pixels")]
    with pytest.raises(ReswiseError) as e:
        load_dataset("imagefolder", root, on_corrupt="error")
    assert "bomb.jpg" in _one_line(e) and "13500 x 13500" in str(e.value)


def test_real_13500_square_png_is_skipped_without_decoding(tmp_path):
    root = make_imagefolder(tmp_path / "d")
    big = root / "class0" / "huge.png"
    Image.new("1", (13500, 13500)).save(big)  # 1-bit zeros: a few kB on disk
    assert big.stat().st_size < 200_000
    d = load_dataset("imagefolder", root)
    assert isinstance(d, TensorImages) and len(d) == 18
    assert d.skipped == [(str(big), "image too large: 13500 x 13500 pixels")]


@pytest.mark.parametrize("layout", ["same_size", "variable_size"])
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_images_over_the_warning_limit_are_skipped_too(tmp_path, monkeypatch, layout, fmt):
    """Between PIL's limit and twice it PIL only warns and decodes: still refused, by size."""
    kw = VARIABLE if layout == "variable_size" else {}
    root = make_imagefolder(tmp_path / "d", fmt=fmt, **kw)
    warn, err = root / "class0" / f"warn.{fmt}", root / "class2" / f"err.{fmt}"
    Image.new("RGB", (120, 100), (9, 9, 9)).save(warn)  # 12 000 px: PIL warns
    Image.new("RGB", (200, 150), (9, 9, 9)).save(err)  # 30 000 px: PIL raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # every 32x32 / ~80x48 image is fine
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = load_dataset("imagefolder", root)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert len(d) == 18
    assert dict(d.skipped) == {
        str(warn): "image too large: 120 x 100 pixels",
        str(err): "image too large: 200 x 150 pixels",
    }


def _ckpt(tmp_path, kind: str):
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        buf = io.BytesIO()
        torch.save(CifarResNet(20).state_dict(), buf)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "text":
        path.write_text("this is not a checkpoint\nsecond line\n")
    elif kind == "blank_lines":
        path.write_text("\n\n\n")
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "blank_lines"])
def test_broken_checkpoint_files_are_one_line_errors(tmp_path, kind):
    path = _ckpt(tmp_path, kind)
    with pytest.raises(ReswiseError) as e:
        create_model("cifar_resnet20", checkpoint=path)
    msg = _one_line(e)
    assert str(path) in msg
    expected = {
        "empty": "is empty (0 bytes)",
        "truncated": "is truncated or damaged",
        "text": "is not a PyTorch file (it starts with b'this')",
        "blank_lines": "is not a PyTorch file",
    }
    assert expected[kind] in msg
