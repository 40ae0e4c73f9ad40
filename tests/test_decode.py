"""One decoder for the sweep and the runtime (``reswise.data.pixels.rgb8``): 16-bit, 32-bit
integer, palette, CMYK, alpha and 1-bit files give the same pixels on both paths; float pixels
and decompression bombs are one-line refusals in the runtime and named skips in the sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reswise.data import load_dataset
from reswise.data.files import decode_image
from reswise.errors import ReswiseError
from reswise.ship.runtime import load_images

from .conftest import CIFAR_JPEG, needs_shared


def _pictures(n: int = 3) -> list[np.ndarray]:
    """Real CIFAR-10 test pictures as H x W x 3 uint8."""
    out = []
    for f in sorted((CIFAR_JPEG / "test" / "cat").iterdir())[:n]:
        with Image.open(f) as im:
            out.append(np.array(im.convert("RGB")))
    return out


def _both_paths(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each file's pixels (H x W x 3) as the sweep sees them (load_dataset, then get) and as the
    runtime does (load_images); the file decoder of large-image folders must agree too."""
    paths = sorted(str(p) for p in folder.glob("*/*"))
    data = load_dataset("imagefolder", folder)
    assert not data.skipped, data.skipped
    swept = data.get(torch.arange(len(data)))
    sweep = {Path(p).name: swept[i].permute(1, 2, 0).numpy() for i, p in enumerate(paths)}
    runtime = {Path(p).name: a.transpose(1, 2, 0) for p, a in zip(paths, load_images(paths))}
    for p in paths:  # FileImages' decoder (variable-size folders)
        assert np.array_equal(decode_image(p).permute(1, 2, 0).numpy(), sweep[Path(p).name]), p
    return sweep, runtime


@needs_shared
def test_16bit_grayscale_decodes_like_its_8bit_copy_on_both_paths(tmp_path: Path):
    folder = tmp_path / "d"
    (folder / "cat").mkdir(parents=True)
    grays = [np.array(Image.fromarray(p).convert("L")) for p in _pictures()]
    for i, g in enumerate(grays):
        Image.fromarray(g).save(folder / "cat" / f"{i}_8.png")
        wide = g.astype(np.uint16) * 257  # 0..255 -> 0..65535
        Image.fromarray(wide).save(folder / "cat" / f"{i}_16.png")
        Image.fromarray(wide).save(folder / "cat" / f"{i}_16.ppm")  # Pillow opens it as mode I
        Image.fromarray(wide.astype(">u2")).save(folder / "cat" / f"{i}_16b.tif")  # I;16B
        Image.fromarray(wide.astype(np.int32)).save(folder / "cat" / f"{i}_32.tif")  # mode I
    with Image.open(folder / "cat" / "0_16.png") as im:
        assert im.mode in ("I;16", "I")  # what makes it a 16-bit file to Pillow
    sweep, runtime = _both_paths(folder)
    for i, g in enumerate(grays):
        want = np.repeat(g[..., None], 3, axis=2).astype(int)
        for kind in ("8.png", "16.png", "16.ppm", "16b.tif", "32.tif"):
            name = f"{i}_{kind}"
            assert np.abs(sweep[name].astype(int) - want).max() <= 1, name
            assert np.array_equal(sweep[name], runtime[name]), name


@needs_shared
def test_cmyk_palette_alpha_and_1bit_files_decode_alike_on_both_paths(tmp_path: Path):
    folder = tmp_path / "d"
    (folder / "cat").mkdir(parents=True)
    rgb = _pictures()[0]
    im = Image.fromarray(rgb)
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2]).astype(np.uint8)
    im.convert("CMYK").save(folder / "cat" / "cmyk.jpg", quality=95)
    pal = im.quantize(64)
    pal.save(folder / "cat" / "palette.png", transparency=5)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "cat" / "rgba.png")
    gray = np.array(im.convert("L"))
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(folder / "cat" / "la.png")
    im.convert("1").save(folder / "cat" / "bits.png")
    with Image.open(folder / "cat" / "palette.png") as p:
        assert p.mode == "P" and p.info["transparency"] == 5
    sweep, runtime = _both_paths(folder)
    for name in sweep:
        assert np.array_equal(sweep[name], runtime[name]), name
    # alpha is dropped, not composited (as torchvision's pil_loader): colours as stored
    assert np.array_equal(sweep["rgba.png"], rgb)
    assert np.array_equal(sweep["la.png"], np.repeat(gray[..., None], 3, axis=2))
    assert np.array_equal(sweep["palette.png"], np.array(pal.convert("RGB")))
    assert set(np.unique(sweep["bits.png"])) <= {0, 255}
    assert np.abs(sweep["cmyk.jpg"].astype(int) - rgb).mean() < 3  # JPEG-lossy, right colours


def test_rgb8_scales_every_integer_mode_and_converts_the_rest():
    from reswise.data.pixels import rgb8

    wide = np.array([[0, 257, 32896, 65535]], np.uint16)
    for arr in (wide, wide.astype(">u2"), wide.astype("<u2"), wide.astype(np.int32)):
        got = rgb8(Image.fromarray(arr))
        assert got.shape == (1, 4, 3) and got.dtype == np.uint8
        assert got[0, :, 0].tolist() == [0, 1, 128, 255] and (got == got[..., :1]).all()
    rgba = np.array([[[200, 100, 50, 128]]], np.uint8)
    premultiplied = Image.fromarray(rgba, "RGBA").convert("RGBa")
    assert np.abs(rgb8(premultiplied).astype(int) - rgba[..., :3]).max() <= 2
    la = Image.fromarray(np.array([[[90, 128]]], np.uint8), "LA").convert("La")
    assert np.abs(rgb8(la).astype(int) - 90).max() <= 2  # Pillow has no La -> RGB of its own
    for mode in ("YCbCr", "HSV", "LAB", "CMYK", "P", "PA", "1", "L", "RGBX"):
        im = Image.fromarray(rgba[..., :3]).convert(mode)
        assert np.array_equal(rgb8(im), np.array(im.convert("RGB"))), mode


@pytest.mark.parametrize("layout", ["same_size", "variable_size"])
def test_float_and_out_of_range_pixels_are_refused_on_both_paths(tmp_path: Path, layout: str):
    from reswise.data import FileImages, TensorImages
    from reswise.data.pixels import UnsupportedPixels, rgb8

    folder = tmp_path / "d"
    (folder / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "a" / "ok.png")
    other = (10, 6) if layout == "variable_size" else (8, 8)
    Image.new("RGB", other, (4, 5, 6)).save(folder / "a" / "ok2.png")
    floats = folder / "a" / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(floats)
    wide = folder / "a" / "wide.tif"
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(wide)
    with pytest.raises(UnsupportedPixels, match="float"):
        rgb8(Image.open(floats))
    data = load_dataset("imagefolder", folder)
    assert isinstance(data, TensorImages if layout == "same_size" else FileImages)
    assert len(data) == 2 and len(data.get(torch.arange(2))) == 2  # found before decoding
    why = dict(data.skipped)
    assert set(why) == {str(floats), str(wide)}
    assert "float" in why[str(floats)] and "70000" in why[str(wide)]
    with pytest.raises(ReswiseError, match=r"float\.tif.*float pixels") as e:
        load_dataset("imagefolder", folder, on_corrupt="error")
    assert "\n" not in str(e.value)
    for bad, what in ((floats, "float"), (wide, "70000")):
        with pytest.raises(ReswiseError, match=what) as e:
            load_images([folder / "a" / "ok.png", bad])
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 20 000 x 20 000 PNG (1-bit zeros: 50 kB on disk, 400 M pixels)."""
    path = tmp_path_factory.mktemp("bomb") / "photos" / "cat" / "huge.png"
    path.parent.mkdir(parents=True)
    Image.new("1", (20000, 20000)).save(path)
    return path


def test_runtime_refuses_a_decompression_bomb_by_name_and_size(bomb: Path):
    with pytest.raises(ReswiseError, match="20000 x 20000") as e:
        load_images([bomb])
    assert str(bomb) in str(e.value) and "\n" not in str(e.value)
    assert "MAX_IMAGE_PIXELS" in str(e.value)  # the fix, for a trusted file


@needs_shared
def test_classify_folder_refuses_a_decompression_bomb_in_one_line(bomb: Path):
    pytest.importorskip("onnxruntime")
    from reswise.ship.runtime import OnnxCascade

    from .test_inputs import exported

    photos = bomb.parent.parent
    jpeg = sorted((CIFAR_JPEG / "test" / "cat").iterdir())[0]
    (photos / "cat" / jpeg.name).write_bytes(jpeg.read_bytes())
    with pytest.raises(ReswiseError, match=r"huge\.png.*20000 x 20000") as e:
        OnnxCascade(exported()).classify_folder(photos)
    assert "\n" not in str(e.value)
