"""Registry, weights and checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from reswise import ReswiseError, create_model, list_models, model_info
from reswise.data import ResizePolicy
from reswise.models.cifar_resnet import CifarResNet

from .conftest import R56, needs_shared


def test_registry_lists_required_names():
    names = list_models()
    for n in [
        "cifar_resnet20",
        "cifar_resnet32",
        "cifar_resnet44",
        "cifar_resnet56",
        "cifar_resnet110",
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mnasnet1_0",
        "efficientnet_lite0",
    ]:
        assert n in names
    assert list_models("cifar_resnet*") == sorted(n for n in names if n.startswith("cifar_resnet"))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ReswiseError, match="unknown model 'resnet9000'.*cifar_resnet20"):
        model_info("resnet9000")


@pytest.mark.parametrize("depth,params", [(20, 0.27e6), (56, 0.85e6), (110, 1.7e6)])
def test_cifar_resnet_param_counts_match_he2016(depth, params):
    n = sum(p.numel() for p in CifarResNet(depth).parameters())
    assert abs(n - params) / params < 0.03


def test_option_a_shortcut_pads_channels_and_subsamples():
    m = CifarResNet(20).eval()
    block = m.layer2[0]
    x = torch.randn(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2]) and s[:, :8].abs().sum() == 0


@needs_shared
def test_shared_checkpoint_loads_and_is_hash_checked():
    lm = create_model("cifar_resnet56", pretrained=True)
    assert lm.weights == "cifar_resnet56.he2016"
    assert lm.info.mean == (0.485, 0.456, 0.406)
    lm2 = create_model("cifar_resnet56", checkpoint=R56)
    for (k, a), b in zip(lm.model.state_dict().items(), lm2.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_wrong_sha256_is_refused(tmp_path, monkeypatch):
    from reswise.models._registry import Weights, resolve_weights

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x.pt").write_bytes(b"not the weights")
    monkeypatch.setenv("RESWISE_WEIGHTS", str(tmp_path))
    w = Weights(tag="t", filename="x.pt", subdir="w", sha256="0" * 64)
    with pytest.raises(ReswiseError, match="sha256"):
        resolve_weights(w)


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    sd = CifarResNet(20).state_dict()
    path = tmp_path / "r20.pt"
    torch.save(sd, path)
    with pytest.raises(ReswiseError, match=r"missing \d+ keys \(e\.g\. layer1\.3"):
        create_model("cifar_resnet32", checkpoint=path)
    sd2 = dict(sd)
    sd2["linear.weight"] = torch.zeros(100, 64)
    torch.save(sd2, path)
    with pytest.raises(ReswiseError, match=r"shape mismatches.*linear\.weight.*\(100, 64\)"):
        create_model("cifar_resnet20", checkpoint=path)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Evil()}, path)
    with pytest.raises(ReswiseError, match="cannot be read safely"):
        create_model("cifar_resnet20", checkpoint=path)


def test_module_prefix_and_wrappers_are_unwrapped(tmp_path):
    m = CifarResNet(20)
    path = tmp_path / "dp.th"
    torch.save(
        {"best_prec1": 1.0, "state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}},
        path,
    )
    lm = create_model("cifar_resnet20", checkpoint=path)
    assert torch.equal(lm.model.linear.weight, m.linear.weight)


def test_efficientnet_lite0_uses_exact_same_padding_at_every_size():
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    lm = create_model("efficientnet_lite0")
    assert lm.info.mean == (0.5, 0.5, 0.5) and lm.info.std == (0.5, 0.5, 0.5)
    static = EfficientNet.from_name("efficientnet-lite0").eval()
    static.load_state_dict(lm.model.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert torch.allclose(lm.model(x), static(x), atol=1e-5)  # identical where static is right
        y = lm.model(torch.randn(1, 3, 196, 196))
    assert y.shape == (1, 1000)


def test_timm_prefix_models_carry_their_preprocessing():
    pytest.importorskip("timm")
    info = model_info("timm:resnet18")
    assert info.input_size == 224 and info.task == "imagenet"
    with pytest.raises(ReswiseError, match="timm has no model"):
        model_info("timm:not_a_model_xyz")


def test_every_shipped_weight_file_is_packaged_hashed_and_has_a_model_card():
    """Weights reswise trained live in the package, match their sha256 and have a card."""
    import hashlib
    from pathlib import Path

    import reswise
    from reswise.models import list_models, model_info

    root = Path(reswise.__file__).parent / "models" / "weights"
    shipped = [
        (name, w)
        for name in list_models()
        for w in model_info(name).weights
        if w.tag.startswith("reswise")
    ]
    assert {name for name, _ in shipped} >= {"cifar_resnet20", "cifar_mobilenetv2_050"}
    for name, w in shipped:
        f = root / w.subdir / w.filename
        assert f.is_file(), (name, f)
        assert hashlib.sha256(f.read_bytes()).hexdigest() == w.sha256, f
        assert w.filename.split("-")[1].startswith(w.sha256[:8])  # name carries the hash prefix
        card = w.notes.split("card: ")[1]
        assert (root / w.subdir / card).is_file(), card
        assert w.sha256 in (root / w.subdir / card).read_text()
        assert w.dataset == "CIFAR-10 (JPEG copy)" and w.top1 is not None


def test_eval_policy_comes_with_the_weights():
    import dataclasses

    cifar = model_info("cifar_resnet20").eval_policy()
    assert (cifar.kind, cifar.interpolation, cifar.antialias) == ("full", "bilinear", True)
    info = model_info("resnet18")
    assert info.eval_policy() == ResizePolicy("crop", info.crop_pct, info.interpolation, True)
    timm_like = dataclasses.replace(info, crop_pct=0.95, interpolation="bicubic")
    assert timm_like.eval_policy() == ResizePolicy("crop", 0.95, "bicubic")
    # an override wins even when it equals the registry default the model does not use
    over = timm_like.eval_policy(crop_pct=0.875, interpolation="bilinear", antialias=False)
    assert over == ResizePolicy("crop", 0.875, "bilinear", False)
    # an explicit value is used as given, not mistaken for "no override"
    with pytest.raises(ReswiseError, match="crop-pct"):
        info.eval_policy(crop_pct=0.0)


def test_shared_folder_is_a_default_that_reswise_shared_overrides(tmp_path, monkeypatch):
    from reswise.models._registry import PROJECT_ROOT, shared_root, weights_roots

    sibling = PROJECT_ROOT.parent / "shared"
    monkeypatch.delenv("RESWISE_SHARED", raising=False)
    monkeypatch.setenv("RESWISE_WEIGHTS", str(tmp_path / "mine"))
    assert shared_root() == sibling
    roots = weights_roots()
    assert roots[0] == tmp_path / "mine" and sibling / "weights" in roots
    monkeypatch.setenv("RESWISE_SHARED", str(tmp_path / "elsewhere"))
    assert shared_root() == tmp_path / "elsewhere"
    roots = weights_roots()
    assert roots[0] == tmp_path / "mine"
    assert tmp_path / "elsewhere" / "weights" in roots and sibling / "weights" not in roots


def _r20_with(tmp_path, key: str, index: tuple[int, ...], value: float):
    sd = CifarResNet(20).state_dict()
    sd[key][index] = value
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    "key,index,value,count",
    [
        ("linear.weight", (0, 0), float("nan"), 1),
        ("bn1.running_var", (slice(0, 3),), float("inf"), 3),  # a buffer, not a parameter
        ("layer2.0.conv1.weight", (0, 0, 0), float("-inf"), 3),
    ],
)
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, key, index, value, count):
    """Bug: one NaN in linear.weight gave 7.50 % at every resolution, exit 0."""
    path = _r20_with(tmp_path, key, index, value)
    with pytest.raises(ReswiseError) as e:
        create_model("cifar_resnet20", checkpoint=path)
    assert str(e.value) == (
        f"checkpoint {path}: tensor '{key}' holds {count} NaN/Inf value(s); the weights are "
        "broken, retrain or re-download them"
    )


def test_non_finite_per_resolution_state_is_refused(tmp_path):
    from reswise.models.checkpoint import save_checkpoint

    m = CifarResNet(20)
    bn = {"bn1.running_mean": torch.full((16,), float("nan"))}
    save_checkpoint(m, {24: bn}, tmp_path / "bn.pt")
    with pytest.raises(ReswiseError, match=r"tensor 'reswise\.bn\.24\.bn1\.running_mean' holds 16"):
        create_model("cifar_resnet20", checkpoint=tmp_path / "bn.pt")


def test_non_finite_shipped_weights_are_refused(tmp_path, monkeypatch):
    from reswise.models import _registry

    sd = CifarResNet(20).state_dict()
    sd["linear.bias"][2] = float("nan")
    (tmp_path / "cifar10-jpeg").mkdir()
    w = model_info("cifar_resnet20").get_weights()
    torch.save(sd, tmp_path / "cifar10-jpeg" / w.filename)
    monkeypatch.setenv("RESWISE_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(_registry, "sha256_file", lambda p: w.sha256)  # pretend it is the file
    with pytest.raises(ReswiseError, match=r"weights cifar_resnet20\.\S+: tensor 'linear\.bias'"):
        create_model("cifar_resnet20", pretrained=True)


def test_check_finite_takes_a_module_or_a_state_dict():
    from reswise.models import check_finite

    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    check_finite(m, "model")  # finite: nothing to say
    check_finite({"step": torch.tensor([1 << 40]), **m.state_dict()}, "model")  # ints are fine
    m[1].running_mean[1] = float("nan")
    with pytest.raises(ReswiseError, match=r"^my model: tensor '1\.running_mean' holds 1 NaN"):
        check_finite(m, "my model")
    m[1].running_mean[1] = 0.0
    m.register_buffer("scratch", torch.tensor([float("inf")]), persistent=False)
    with pytest.raises(ReswiseError, match=r"tensor 'scratch' holds 1"):
        check_finite(m, "model")
    with pytest.raises(ReswiseError, match=r"tensor 'w' holds 2"):
        check_finite({"w": torch.tensor([float("nan"), 1.0, float("inf")]).half()}, "model")
