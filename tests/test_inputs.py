"""Inputs checked at every door: a class map that merges classes or repeats a key, and image
tensors / arrays of the wrong dtype, range, values or shape given to the shipped cascade
(``AdaptiveClassifier`` and ``reswise.runtime.OnnxCascade``) are one-line refusals; valid uint8
and float-in-[0, 1] images keep their answers."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reswise.data import TensorImages, align_labels
from reswise.data.classes import CIFAR10_NAMES
from reswise.errors import ReswiseError

from .conftest import CIFAR_JPEG, needs_shared

MODEL, TAG = "cifar_resnet20", "reswise_jpeg_multires_v2"
CHAIN = [24, 32]


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ------------------------------------------------------------------ class maps
def _data(classes: list[str]) -> TensorImages:
    labels = torch.arange(len(classes)).repeat_interleave(2)
    return TensorImages(torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8), labels, classes)


@pytest.mark.parametrize(
    "mapping",
    [
        {"kitty": "cat", "puppy": "cat"},
        {"kitty": "cat", "puppy": 3},  # a name and an index of one class
        {"kitty": "Cat", "puppy": " cat"},  # the loose spellings of one name
    ],
)
def test_class_map_sending_two_folders_to_one_class_is_refused(tmp_path: Path, mapping):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping))
    with pytest.raises(ReswiseError, match=r"'kitty' and 'puppy'.*class 3 \('cat'\)") as e:
        align_labels(_data(["kitty", "puppy"]), list(CIFAR10_NAMES), path)
    assert str(path) in _one_line(e)
    # a dict is checked alike, and a model without names too
    with pytest.raises(ReswiseError, match="'a' and 'b'"):
        align_labels(_data(["a", "b"]), None, {"a": 1, "b": 1}, num_classes=2)


def test_class_map_with_a_repeated_key_is_refused(tmp_path: Path):
    path = tmp_path / "map.json"
    path.write_text('{"kitty": "cat", "puppy": "dog", "kitty": "frog"}')
    with pytest.raises(ReswiseError, match=r"'kitty' twice") as e:
        align_labels(_data(["kitty", "puppy"]), list(CIFAR10_NAMES), path)
    assert str(path) in _one_line(e)
    # the entries still map when each folder has its own class
    path.write_text('{"kitty": "cat", "puppy": "dog", "spare": "dog"}')  # 'spare' is no folder
    aligned, _ = align_labels(_data(["kitty", "puppy"]), list(CIFAR10_NAMES), path)
    assert aligned.labels.tolist() == [3, 3, 5, 5]


# ------------------------------------------------------------------ a small real cascade
@functools.lru_cache(maxsize=1)
def cascade() -> tuple[Path, torch.Tensor, torch.Tensor, object]:
    """A 24 -> 32 cascade policy over the shipped multi-resolution ResNet-20 (its own BN at 24),
    its policy file and 64 real CIFAR-10 test images (uint8) with their labels."""
    import reswise
    from reswise.data import load_dataset
    from reswise.records import Records, SweepResult
    from reswise.ship.adaptive import state_sha256
    from reswise.ship.policy_file import build_policy, save_policy

    lm = reswise.create_model(MODEL, pretrained=TAG)
    data = load_dataset("imagefolder", str(CIFAR_JPEG / "test"), limit=64, seed=0)
    images, labels = data.get(torch.arange(len(data))), data.labels
    n = 40  # a stand-in run: the policy's figures are not what these tests read
    rec = Records(CHAIN, np.arange(n), np.zeros(n, np.int64), np.zeros((2, n, 2), np.int32),
                  np.full((2, n, 2), 0.5, np.float32), np.zeros((2, n), np.float32))  # fmt: skip
    rows = [{"resolution": 24, "flops": 23}, {"resolution": 32, "flops": 41}]
    run = SweepResult(MODEL, f"{MODEL}.{TAG}", "cifar", 32, "whole image", "bilinear", rows, rec)
    own = lm.info.eval_policy()
    found = {"chain": CHAIN, "thresholds": [0.6], "signal": "margin", "top1": 90.0,
             "reference_top1": 91.0, "acc_drop_pct": 1.0, "acc_drop_ci": [0.0, 2.0],
             "flops_drop_pct": 30.0, "stage_share_pct": [70.0, 30.0], "n_calib": 20,
             "n_heldout": 20}  # fmt: skip
    pre = {"kind": own.kind, "crop_pct": own.crop_pct, "interpolation": own.interpolation,
           "antialias": own.antialias, "mean": list(lm.info.mean), "std": list(lm.info.std),
           "input_size": 32}  # fmt: skip
    weights = {"name": run.weights, "source": {"pretrained": TAG}, "sha256": state_sha256(lm)}
    budget = {"max_drop": 1.0, "confidence": 0.95, "calib_frac": 0.5, "seed": 0}
    bn = {24: "weights", 32: "shared"}
    policy = build_policy(run, found, budget, weights=weights, preprocessing=pre, bn_source=bn,
                          class_names=list(lm.info.class_names))  # fmt: skip
    path = save_policy(policy, Path(tempfile.mkdtemp(prefix="reswise_inputs_")) / "policy.json")
    return path, images, labels, lm


@functools.lru_cache(maxsize=1)
def module() -> object:
    from reswise.ship.adaptive import AdaptiveClassifier

    path, _, _, lm = cascade()
    return AdaptiveClassifier(path, lm)


@functools.lru_cache(maxsize=1)
def exported() -> Path:
    """The cascade exported to ONNX (graphs + policy.json), for ``reswise.runtime``."""
    from reswise.ship.export import export_policy

    path, _, _, lm = cascade()
    out = path.parent / "shipped"
    export_policy(path, out, lm=lm)
    return out


BAD_TENSORS = [
    (lambda x: x.to(torch.int64), r"int64.*\.to\(torch\.uint8\)"),
    (lambda x: x.to(torch.int32), r"int32.*\.to\(torch\.uint8\)"),
    (lambda x: x > 127, r"bool.*\.to\(torch\.uint8\)"),
    (lambda x: x.float(), r"0\.\.255.*divide by 255 or pass uint8"),
    (lambda x: (x.float() / 255).masked_fill(x == 0, float("nan")), r"not finite"),
    (lambda x: x.float() / 255 - 0.5, r"0\.\.1|\[0, 1\]"),
    (lambda x: x[:, :, :28, :28], r"3 x 32 x 32"),
    (lambda x: x.permute(0, 2, 3, 1), r"3 x 32 x 32"),
    (lambda x: x[0], r"3 x 32 x 32"),
]


@needs_shared
@pytest.mark.parametrize("bad,msg", BAD_TENSORS)
def test_module_refuses_images_of_the_wrong_dtype_range_or_shape(bad, msg):
    _, images, _, _ = cascade()
    with pytest.raises(ReswiseError, match=msg) as e:
        module()(bad(images[:8]))
    _one_line(e)


@needs_shared
def test_module_answers_uint8_and_float_images_alike():
    _, images, labels, _ = cascade()
    want = module()(images)
    assert set(want.resolution.tolist()) == set(CHAIN)  # both stages answered some images
    assert (want.logits.argmax(1) == labels).float().mean() >= 0.8  # a 90 % model
    for x in (images.float() / 255, images.double() / 255):
        got = module()(x)
        assert (got.resolution == want.resolution).float().mean() >= 0.95
        assert (got.logits.argmax(1) == want.logits.argmax(1)).float().mean() >= 0.95


BAD_ARRAYS = [
    (lambda x: x.astype(np.int64), r"int64.*astype\(np\.uint8\)"),
    (lambda x: x.astype(np.uint16), r"uint16.*astype\(np\.uint8\)"),
    (lambda x: x > 127, r"bool.*astype\(np\.uint8\)"),
    (lambda x: x.astype(np.float32), r"0\.\.255.*divide by 255 or pass uint8"),
    (lambda x: np.where(x == 0, np.nan, x / 255.0), r"not finite"),
    (lambda x: x / 255.0 - 0.5, r"0\.\.1|\[0, 1\]"),
    (lambda x: x[:, :, :28, :28], r"3 x 32 x 32"),
    (lambda x: x[0], r"3 x 32 x 32"),
]


@needs_shared
@pytest.mark.parametrize("bad,msg", BAD_ARRAYS)
def test_runtime_refuses_arrays_of_the_wrong_dtype_range_or_shape(bad, msg):
    pytest.importorskip("onnxruntime")
    from reswise.ship.runtime import OnnxCascade

    _, images, _, _ = cascade()
    with pytest.raises(ReswiseError, match=msg) as e:
        OnnxCascade(exported())(bad(images[:8].numpy()))
    _one_line(e)


@needs_shared
def test_runtime_answers_uint8_and_float_arrays_as_the_module_does():
    pytest.importorskip("onnxruntime")
    from reswise.ship.runtime import OnnxCascade

    _, images, _, _ = cascade()
    runner = OnnxCascade(exported())
    want = module()(images)
    x = images.numpy()
    for arr in (x, x.transpose(0, 2, 3, 1), x / 255.0, (x / 255.0).astype(np.float32)):
        logits, res = runner(arr)
        assert np.mean(res == want.resolution.numpy()) >= 0.95
        assert np.mean(logits.argmax(1) == want.logits.argmax(1).numpy()) >= 0.95
