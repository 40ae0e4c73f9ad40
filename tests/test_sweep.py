"""The one-pass sweep: same answers as the naive per-resolution loop, resumable, real accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reswise import Records, ReswiseError, create_model, load_dataset, sweep
from reswise.data import normalizer

from .conftest import CIFAR_JPEG, needs_shared


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def naive(model, images, r, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    scale, shift = normalizer(mean, std)
    outs = []
    with torch.no_grad():
        for img in images:  # one image at a time, resized on its own
            x = (
                img[None]
                if r == img.shape[-1]
                else F.interpolate(
                    img[None], size=(r, r), mode="bilinear", antialias=True, align_corners=False
                )
            )
            outs.append(model.eval()(x.float() * scale + shift))
    return torch.cat(outs)


def test_one_pass_sweep_equals_the_naive_loop(tiny_folder):
    data = load_dataset("imagefolder", tiny_folder)
    model = Tiny()
    res = sweep(model, data, [32, 24, 16], batch_size=5)
    for r in [32, 24, 16]:
        logits = naive(model, data.images, r)
        top = torch.softmax(logits, 1).topk(3, 1)
        assert np.array_equal(res.records.topk_idx[res.records.row(r)], top.indices.numpy())
        assert np.allclose(res.records.topk_prob[res.records.row(r)], top.values.numpy(), atol=1e-5)
        acc = (logits.argmax(1) == data.labels).float().mean().item() * 100
        assert res.rows[[32, 24, 16].index(r)]["top1"] == pytest.approx(acc)
    assert res.rows[0]["acc_drop_pct"] == 0 and res.rows[2]["flops_drop_pct"] == pytest.approx(
        75, abs=0.05
    )
    assert res.fast_path.startswith("conv-bn folded")


def test_records_round_trip_and_agree_with_rows(tiny_folder, tmp_path):
    data = load_dataset("imagefolder", tiny_folder)
    res = sweep(Tiny(), data, [32, 16])
    res.records.save(tmp_path / "r.npz")
    rec = Records.load(tmp_path / "r.npz")
    assert rec.resolutions == [32, 16] and np.array_equal(rec.labels, data.labels.numpy())
    assert 100 * rec.correct(16).mean() == pytest.approx(res.rows[1]["top1"])
    assert np.array_equal(rec.indices, np.arange(len(data)))


class Flaky:
    """Wraps a dataset; raises after `fail_after` chunks, counts chunk loads."""

    def __init__(self, data, fail_after=None):
        self.data, self.fail_after, self.calls = data, fail_after, 0
        self.labels, self.name, self.classes = data.labels, data.name, data.classes

    def __len__(self):
        return len(self.data)

    def get(self, idx):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return self.data.get(idx)


def test_interrupted_sweep_resumes_where_it_stopped(tiny_folder, tmp_path):
    data = load_dataset("imagefolder", tiny_folder)
    model, ck = Tiny(), tmp_path / "progress.npz"
    full = sweep(model, data, [32, 20], batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        sweep(
            model,
            Flaky(data, fail_after=3),
            [32, 20],
            batch_size=4,
            checkpoint_path=ck,
            save_every_s=0,
        )
    assert ck.is_file()
    again = Flaky(data)
    res = sweep(model, again, [32, 20], batch_size=4, checkpoint_path=ck, save_every_s=0)
    assert again.calls == 5 - 3  # 5 chunks; 3 were evaluated and saved before load 4 failed
    assert np.array_equal(res.records.topk_idx, full.records.topk_idx)
    assert [r["top1"] for r in res.rows] == [r["top1"] for r in full.rows]
    assert not ck.exists()


def test_resolution_below_the_models_downsampling_is_refused(tiny_folder):
    lm = create_model("resnet18")
    with pytest.raises(ReswiseError, match="too small for resnet18"):
        sweep(lm, load_dataset("imagefolder", tiny_folder), [32, 16])


@needs_shared
def test_fast_path_keeps_results_within_005_points():
    data = load_dataset("imagefolder", CIFAR_JPEG / "test", limit=2000)
    lm = create_model("cifar_resnet20", pretrained="he2016")
    a = sweep(lm, data, [32, 24, 16])
    b = sweep(lm, data, [32, 24, 16], fast=False)
    assert b.fast_path == "eager"
    for ra, rb in zip(a.rows, b.rows):
        assert abs(ra["top1"] - rb["top1"]) <= 0.05


@needs_shared
def test_shared_resnet56_scores_the_measured_8320_on_the_jpeg_copy():
    data = load_dataset("imagefolder", CIFAR_JPEG / "test")
    assert len(data) == 10000
    res = sweep(create_model("cifar_resnet56", pretrained=True), data, [32], backend="onnxruntime")
    assert res.rows[0]["top1"] == pytest.approx(83.20, abs=0.05)


@needs_shared
def test_sweep_agrees_with_torchvision_imagefolder_and_pil_resize():
    """The naive pipeline users would write: PIL resize + ToTensor + Normalize."""
    from torchvision import datasets, transforms

    lm = create_model("cifar_resnet20", pretrained="he2016")
    data = load_dataset("imagefolder", CIFAR_JPEG / "test", limit=300, seed=3)
    ours = sweep(lm, data, [32, 24])
    tf = transforms.Compose(
        [
            transforms.Resize((24, 24)),
            transforms.ToTensor(),
            transforms.Normalize(lm.info.mean, lm.info.std),
        ]
    )
    ds = datasets.ImageFolder(str(CIFAR_JPEG / "test"), transform=tf)
    sel = load_dataset("imagefolder", CIFAR_JPEG / "test", limit=300, seed=3)
    paths = {s[0]: i for i, s in enumerate(ds.samples)}
    from reswise.data.datasets import _select, scan_imagefolder

    all_paths, all_labels, _ = scan_imagefolder(CIFAR_JPEG / "test")
    chosen = [paths[all_paths[i]] for i in _select(all_paths, all_labels, 300, 3)]
    x = torch.stack([ds[i][0] for i in chosen])
    with torch.no_grad():
        pred = lm.model(x).argmax(1).numpy()
    agree = (pred == ours.records.topk_idx[1, :, 0]).mean()
    assert len(sel) == 300 and agree >= 0.97  # PIL and torch kernels round differently


def test_more_classes_than_the_model_predicts_is_refused(tmp_path):
    from .conftest import make_imagefolder

    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=1, classes=4))
    with pytest.raises(ReswiseError, match="4 classes but the model predicts 3"):
        sweep(Tiny(), data, [32])


@needs_shared
def test_reswise_trained_weights_score_what_their_cards_say():
    """Every weight reswise ships, on the whole CIFAR-10 (JPEG copy) test set."""
    from reswise.models import model_info

    data = load_dataset("imagefolder", CIFAR_JPEG / "test")
    top, checked = {}, []
    for name in ("cifar_resnet20", "cifar_mobilenetv2_050", "cifar_nasnet_a"):
        for w in model_info(name).weights:
            if not w.tag.startswith("reswise"):
                continue
            lm = create_model(name, pretrained=w.tag)
            # ONNX Runtime: the same predictions as eager (test_backends) in ~3/4 of the time
            rows = sweep(lm, data, [32, 20], backend="onnxruntime").rows
            top[name, w.tag] = {row["resolution"]: row["top1"] for row in rows}
            # BN folding and bf16-free inference shift a handful of images at most
            assert top[name, w.tag][32] == pytest.approx(w.top1, abs=0.05), (name, w.tag)
            checked.append(name)
    assert set(checked) == {"cifar_resnet20", "cifar_mobilenetv2_050", "cifar_nasnet_a"}
    # the multi-resolution weights carry private BN for 20x20 and are built to run there
    assert "bn1.running_mean" in create_model(
        "cifar_resnet20", pretrained="reswise_jpeg_multires"
    ).extra.get(20)
    # every family has multi-resolution weights, and they are what makes 20x20 usable
    for name in set(checked):
        at20 = {tag: t[20] for (n, tag), t in top.items() if n == name}
        assert at20["reswise_jpeg_multires"] > at20["reswise_jpeg"] + 5, name
    r20 = {tag: t[20] for (name, tag), t in top.items() if name == "cifar_resnet20"}
    assert r20["reswise_jpeg_multires_v2"] > r20["reswise_jpeg_multires"] + 2


@needs_shared
def test_the_lite0_weights_reswise_ships_score_their_card_at_their_own_size():
    """Lite0 fine-tuned at 96 on CIFAR-10: loaded by tag it is a 96-pixel, whole-image model
    (the architecture's 224 and crop would score something else), 87.74 % as its card says."""
    from reswise.models import model_info

    data = load_dataset("imagefolder", CIFAR_JPEG / "test")
    for w in model_info("efficientnet_lite0").weights:
        lm = create_model("efficientnet_lite0", pretrained=w.tag)
        assert (lm.info.input_size, lm.info.crop_pct) == (96, 1.0)
        (row,) = sweep(lm, data, [96], backend="onnxruntime").rows
        assert row["top1"] == pytest.approx(w.top1, abs=0.05), w.tag
