"""Class folders are matched to the model's classes by name: never silently by position."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from reswise import ReswiseError, create_model, load_dataset, model_info
from reswise.data import TensorImages, align_labels, imagenet_wnids
from reswise.data.classes import CIFAR10_NAMES, POSITIONAL

from .conftest import CIFAR_JPEG, IMAGENET_SAMPLE, make_imagefolder, needs_shared

CIFAR = list(CIFAR10_NAMES)


def _data(classes: list[str], per_class: int = 2, name: str = "") -> TensorImages:
    labels = torch.arange(len(classes)).repeat_interleave(per_class)
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)
    return TensorImages(images, labels, list(classes), name)


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ------------------------------------------------------------------ what the models carry
def test_known_models_carry_their_class_names():
    for name in ("cifar_resnet20", "cifar_resnet110", "cifar_mobilenetv2_050", "cifar_nasnet_a"):
        assert model_info(name).class_names == tuple(CIFAR), name
    for name in ("resnet50", "mobilenet_v3_small", "efficientnet_lite0"):
        assert model_info(name).class_names == imagenet_wnids(), name
    pytest.importorskip("timm")
    assert model_info("timm:resnet18").class_names == imagenet_wnids()


def test_the_wnid_list_is_the_standard_order():
    wnids = imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert wnids[0] == "n01440764" and wnids[207] == "n02099601" and wnids[999] == "n15075141"
    if IMAGENET_SAMPLE.is_dir():
        assert list(wnids) == sorted(os.listdir(IMAGENET_SAMPLE))


def test_loaded_weights_say_whether_they_carry_names(tmp_path):
    assert create_model("cifar_resnet20", pretrained=True).info.class_names == tuple(CIFAR)
    assert create_model("cifar_resnet20").info.class_names is None  # random init: no classes
    torch.save(create_model("cifar_resnet20").model.state_dict(), tmp_path / "mine.pt")
    assert create_model("cifar_resnet20", checkpoint=tmp_path / "mine.pt").info.class_names is None
    assert create_model("resnet18", num_classes=7).info.num_classes == 7


def test_checkpoints_can_carry_class_names(tmp_path):
    from reswise.models.checkpoint import save_checkpoint, split_checkpoint

    lm = create_model("cifar_resnet20", pretrained=True)
    save_checkpoint(lm, {}, tmp_path / "named.pt")  # a LoadedModel brings its names along
    assert split_checkpoint(torch.load(tmp_path / "named.pt"))[1].class_names == tuple(CIFAR)
    again = create_model("cifar_resnet20", checkpoint=tmp_path / "named.pt")
    assert again.info.class_names == tuple(CIFAR)
    digits = tuple(str(i) for i in range(10))
    save_checkpoint(lm.model, {}, tmp_path / "digits.pt", class_names=digits)
    assert (
        create_model("cifar_resnet20", checkpoint=tmp_path / "digits.pt").info.class_names == digits
    )
    save_checkpoint(lm.model, {}, tmp_path / "bad.pt", class_names=("a", "b", "c"))
    with pytest.raises(ReswiseError, match="3 class names but the model predicts 10"):
        create_model("cifar_resnet20", checkpoint=tmp_path / "bad.pt")


# ------------------------------------------------------------------ by name
def test_a_subset_of_cifar_folders_maps_by_name():
    """Bug: folders cat, dog, frog were labels 0, 1, 2 (airplane, automobile, bird): 0.00 %."""
    data = _data(["cat", "dog", "frog"])
    aligned, how = align_labels(data, CIFAR)
    assert aligned.labels.tolist() == [3, 3, 5, 5, 6, 6]
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]  # the input is left alone
    assert aligned.classes == ["cat", "dog", "frog"] and aligned.label_names == tuple(CIFAR)
    assert (
        how
        == aligned.label_mapping
        == "labels mapped by class name (3 folders onto the model's 10 classes)"
    )
    assert aligned.fingerprint() != data.fingerprint()


def test_imagenet_folders_map_by_wnid_or_human_name():
    wnids = imagenet_wnids()
    aligned, _ = align_labels(_data(["n15075141", "n01443537"], 1), wnids)
    assert aligned.labels.tolist() == [999, 1]
    aligned, _ = align_labels(_data(["goldfish", "great_white_shark", "tench"], 1), wnids)
    assert aligned.labels.tolist() == [1, 2, 0]
    aligned, _ = align_labels(_data(["Cardigan", "cardigan"], 1), wnids)  # corgi, sweater
    assert aligned.labels.tolist() == [264, 474]
    with pytest.raises(ReswiseError, match="'CARDIGAN'"):  # which one? ambiguous: refused
        align_labels(_data(["CARDIGAN"], 1), wnids)


def test_unknown_folder_names_are_refused_listing_them(tmp_path):
    """Bug: renamed folders gave 30.50 % with no word."""
    data = _data([f"kind{i}" for i in range(7)], name=str(tmp_path))
    with pytest.raises(ReswiseError) as e:
        align_labels(data, CIFAR)
    msg = _one_line(e)
    assert (
        "7 of 7 class folders" in msg and "'kind0', 'kind1', 'kind2', 'kind3', 'kind4', ..." in msg
    )
    assert "'kind5'" not in msg and "'airplane', 'automobile', 'bird'" in msg
    assert "--class-map FILE" in msg


@needs_shared
def test_the_parent_of_the_splits_is_refused_with_the_right_root():
    """Bug: --data-root cifar10-jpeg (folders test, train) reported 10.00 % top-1."""
    data = load_dataset("imagefolder", CIFAR_JPEG, limit=20)
    with pytest.raises(ReswiseError) as e:
        align_labels(data, CIFAR)
    msg = _one_line(e)
    assert "'test', 'train'" in msg and f"use --data-root {CIFAR_JPEG / 'test'}" in msg


def test_more_folders_than_model_classes_is_refused():
    with pytest.raises(ReswiseError, match="11 class folders but the model predicts 10"):
        align_labels(_data([*CIFAR, "zebra"]), CIFAR)
    with pytest.raises(ReswiseError, match="3 class folders but the model predicts 2"):
        align_labels(_data(["a", "b", "c"]), None, num_classes=2)


def test_models_without_names_keep_folder_positions_and_say_so():
    data = _data(["x", "y", "z"])
    aligned, how = align_labels(data, None, num_classes=10)
    assert (
        how == POSITIONAL == "labels mapped by folder position (the model carries no class names)"
    )
    assert torch.equal(aligned.labels, data.labels) and aligned.label_names is None
    with pytest.raises(ReswiseError, match="already mapped"):
        align_labels(aligned, None)


# ------------------------------------------------------------------ by class map
def _write_map(tmp_path, obj) -> str:
    path = tmp_path / "map.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_class_map_maps_folders_by_name_or_index(tmp_path):
    path = _write_map(tmp_path, {"kitty": "cat", "puppy": 5, "toad": "6", "spare": "ship"})
    aligned, how = align_labels(_data(["kitty", "puppy", "toad"]), CIFAR, path)
    assert aligned.labels.tolist() == [3, 3, 5, 5, 6, 6]
    assert how == f"labels mapped by class map {path} (3 folders)"
    # a model without names takes indices only
    aligned, _ = align_labels(
        _data(["kitty", "puppy"]), None, {"kitty": 1, "puppy": 0}, num_classes=2
    )
    assert aligned.labels.tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "obj,msg",
    [
        ({"kitty": "cat"}, r"no entry for 1 class folder\(s\) \('puppy'\)"),
        (
            {"kitty": "cat", "puppy": "wolf"},
            r"maps folder 'puppy' to 'wolf'.*use 0\.\.9 or a class name",
        ),
        ({"kitty": "cat", "puppy": 10}, r"maps folder 'puppy' to 10"),
        ({"kitty": "cat", "puppy": -1}, r"maps folder 'puppy' to -1"),
        ({"kitty": "cat", "puppy": True}, r"maps folder 'puppy' to True"),
        ('{"kitty": "cat",', r"not valid JSON"),
        ('["cat", "dog"]', r"must be one JSON object"),
    ],
)
def test_bad_class_maps_are_refused(tmp_path, obj, msg):
    with pytest.raises(ReswiseError, match=msg) as e:
        align_labels(_data(["kitty", "puppy"]), CIFAR, _write_map(tmp_path, obj))
    _one_line(e)


def test_missing_class_map_file_is_named(tmp_path):
    with pytest.raises(ReswiseError, match=r"class map .*nope\.json cannot be read"):
        align_labels(_data(["a"]), CIFAR, tmp_path / "nope.json")


# ------------------------------------------------------------------ end to end
@needs_shared
def test_cat_dog_frog_folder_scores_like_the_model_not_zero(tmp_path):
    from reswise import sweep

    root = tmp_path / "three"
    root.mkdir()
    for c in ("cat", "dog", "frog"):
        os.symlink(CIFAR_JPEG / "test" / c, root / c)
    data = load_dataset("imagefolder", root, limit=150)
    lm = create_model("cifar_resnet20", pretrained=True)
    aligned, _ = align_labels(data, lm.info.class_names)
    acc = sweep(lm, aligned, [32], progress=False).rows[0]["top1"]
    assert acc > 60, acc  # the shipped weights score ~90 % overall; 0.00 % before the fix


def test_imagefolder_tree_with_the_model_classes_maps_identity(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_per_class=1, classes=3)
    for i, c in enumerate(("airplane", "automobile", "bird")):
        (root / f"class{i}").rename(root / c)
    data = load_dataset("imagefolder", root)
    aligned, _ = align_labels(data, CIFAR)
    assert torch.equal(aligned.labels, data.labels) and aligned.label_names == tuple(CIFAR)
