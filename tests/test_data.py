"""Datasets decoded once into uint8 tensors; resize policies; CIFAR-10's official format."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from reswise import ResizePolicy, ReswiseError, load_dataset
from reswise.data import (
    FileImages,
    TensorImages,
    load_imagefolder,
    parse_resolutions,
    save_cifar_batch,
)
from reswise.data.datasets import decode_image

from .conftest import CIFAR_JPEG, make_imagefolder, needs_shared


def test_imagefolder_becomes_one_uint8_tensor_with_sorted_classes(tiny_folder):
    d = load_dataset("imagefolder", tiny_folder)
    assert isinstance(d, TensorImages)
    assert d.images.dtype == torch.uint8 and d.images.shape == (18, 3, 32, 32)
    assert d.classes == ["class0", "class1", "class2"]
    assert d.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    ref = np.array(Image.open(tiny_folder / "class1" / "002.png").convert("RGB"))
    assert torch.equal(d.images[8], torch.from_numpy(ref).permute(2, 0, 1))


def test_decode_cache_is_reused_and_invalidated_by_changes(tiny_folder):
    a = load_dataset("imagefolder", tiny_folder)
    b = load_dataset("imagefolder", tiny_folder)
    assert torch.equal(a.images, b.images)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tiny_folder / "class0" / "000.png")
    c = load_dataset("imagefolder", tiny_folder)
    assert c.images[0].sum() == 0 and not torch.equal(a.images[0], c.images[0])


def test_two_processes_decoding_one_folder_at_once_both_get_it(tiny_folder, monkeypatch):
    """Bug: concurrent runs (four trainings on one GPU machine) shared one temporary file name,
    so the slower one's rename failed with FileNotFoundError after the faster one's."""
    from reswise.data import datasets

    real_save, nested, calls = torch.save, [], []

    def save_then_let_the_other_process_finish(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        calls.append(f)
        if len(calls) == 1:  # the other process decodes and publishes the cache meanwhile
            nested.append(load_dataset("imagefolder", tiny_folder))

    monkeypatch.setattr(datasets.torch, "save", save_then_let_the_other_process_finish)
    first = load_dataset("imagefolder", tiny_folder)
    assert torch.equal(first.images, nested[0].images)
    assert first.name == nested[0].name == str(tiny_folder)  # results name the data, not a file
    leftovers = [p.name for p in (datasets.cache_dir() / "decoded").iterdir()]
    assert all(n.endswith(".pt") for n in leftovers), leftovers


def test_corrupt_images_are_skipped_and_counted_or_named(tiny_folder):
    bad = tiny_folder / "class2" / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    d = load_dataset("imagefolder", tiny_folder)
    assert len(d) == 18 and len(d.skipped) == 1 and d.skipped[0][0] == str(bad)
    with pytest.raises(ReswiseError, match="bad.png"):
        load_dataset("imagefolder", tiny_folder, on_corrupt="error")


def test_variable_size_images_stay_on_disk_and_decode_on_demand(tmp_path):
    root = make_imagefolder(tmp_path / "v", n_per_class=2, size=lambda i: (300 + 40 * i, 240))
    d = load_dataset("imagefolder", root)
    assert isinstance(d, FileImages) and len(d) == 6
    imgs = d.get(torch.tensor([0, 1]))
    assert imgs[0].shape == (3, 240, 300) and imgs[1].shape == (3, 240, 340)


def test_limit_takes_a_seeded_subset(tiny_folder):
    a = load_dataset("imagefolder", tiny_folder, limit=5, seed=1)
    b = load_dataset("imagefolder", tiny_folder, limit=5, seed=1)
    c = load_dataset("imagefolder", tiny_folder, limit=5, seed=2)
    assert len(a) == 5 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


@pytest.mark.parametrize("root_kind", ["missing", "empty", "no_images"])
def test_bad_data_roots_are_clear_errors(tmp_path, root_kind):
    root = tmp_path / "r"
    if root_kind != "missing":
        root.mkdir()
    if root_kind == "no_images":
        (root / "a").mkdir()
        (root / "a" / "x.txt").write_text("x")
    with pytest.raises(ReswiseError, match="--data-root"):
        load_dataset("imagefolder", root)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ReswiseError, match="unknown dataset 'mnist'.*cifar10, imagefolder"):
        load_dataset("mnist", "x")


def _write_cifar(root, n=20, seed=0):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, n)]
    save_cifar_batch(base / "test_batch", imgs, labels)
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}))
    return imgs, labels


def test_cifar10_official_format_is_read_in_chw_order(tmp_path):
    imgs, labels = _write_cifar(tmp_path)
    d = load_dataset("cifar10", tmp_path)
    assert torch.equal(d.images, torch.from_numpy(imgs)) and d.labels.tolist() == labels
    assert d.classes[0] == "airplane" and d.classes[9] == "truck"


def test_cifar10_batch_with_code_is_refused(tmp_path):
    _write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(ReswiseError, match="corrupt"):
        load_dataset("cifar10", tmp_path)


def test_full_policy_matches_pil_bilinear_within_rounding(tiny_folder):
    path = tiny_folder / "class0" / "001.png"
    img = decode_image(str(path))
    ours = ResizePolicy("full")(img[None], 20)[0]
    pil = np.array(Image.open(path).convert("RGB").resize((20, 20), Image.BILINEAR))
    diff = (ours.permute(1, 2, 0).int() - torch.from_numpy(pil).int()).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.5


def test_crop_policy_geometry_matches_torchvision_eval_preset():
    from torchvision.transforms import v2

    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    ours = ResizePolicy("crop", crop_pct=0.875)(img[None], 224)[0]
    tv = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(img)
    assert ours.shape == (3, 224, 224)
    assert (ours.int() - tv.int()).abs().max() <= 1


def test_identity_resolution_returns_the_pixels_untouched():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(ResizePolicy("full")(x, 32), x)


@pytest.mark.parametrize(
    "text,msg",
    [("32,x", "comma-separated"), ("", "empty"), ("32,-4", "positive"), ("32,32", "twice")],
)
def test_bad_resolution_lists(text, msg):
    with pytest.raises(ReswiseError, match=msg):
        parse_resolutions(text)


def test_bad_interpolation_names_the_valid_ones():
    with pytest.raises(ReswiseError, match="unknown interpolation 'lanczos'.*bicubic"):
        ResizePolicy("full", interpolation="lanczos")


def test_imagenet_layout_needs_all_1000_classes(tmp_path):
    root = make_imagefolder(tmp_path / "v", n_per_class=1, size=lambda i: (300, 240))
    with pytest.raises(ReswiseError, match="1000 wnid class folders, found 3"):
        load_dataset("imagenet", root)


def test_corrupt_jpeg_among_jpegs_falls_back_and_is_named(tmp_path):
    root = make_imagefolder(tmp_path / "j", fmt="jpg")
    (root / "class1" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    d = load_dataset("imagefolder", root)
    assert len(d) == 18 and [p for p, _ in d.skipped] == [str(root / "class1" / "broken.jpg")]
    ref = np.asarray(Image.open(root / "class2" / "000.jpg").convert("RGB"))
    assert torch.equal(d.images[12], torch.from_numpy(ref.copy()).permute(2, 0, 1))


@needs_shared
def test_fingerprint_follows_the_evaluated_images_and_labels():
    root = CIFAR_JPEG / "test"
    a = load_dataset("imagefolder", root, limit=500, seed=0)
    b = load_imagefolder(root, limit=500, seed=0, use_cache=False)  # decoded again
    c = load_dataset("imagefolder", root, limit=500, seed=1)
    assert isinstance(a, TensorImages) and len(a.fingerprint()) == 16
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    relabeled = TensorImages(a.images, a.labels.roll(1), a.classes, a.name)
    assert relabeled.fingerprint() != a.fingerprint()
    assert a.subset(torch.arange(499)).fingerprint() != a.fingerprint()


def test_fingerprint_of_files_follows_paths_sizes_times_and_labels(tmp_path):
    root = make_imagefolder(tmp_path / "v", n_per_class=2, size=lambda i: (60 + 8 * i, 48))
    a, b = load_dataset("imagefolder", root), load_dataset("imagefolder", root)
    before = a.fingerprint()
    assert isinstance(a, FileImages) and before == b.fingerprint()
    assert load_dataset("imagefolder", root, limit=5, seed=0).fingerprint() != before
    relabeled = FileImages(a.paths, a.labels.flip(0), a.classes, a.name)
    assert relabeled.fingerprint() != before
    f = root / "class1" / "000.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # edited in place
    # read from the files when asked, as the pixels are: call it when the run starts
    after = load_dataset("imagefolder", root).fingerprint()
    assert after != before and a.fingerprint() == after
