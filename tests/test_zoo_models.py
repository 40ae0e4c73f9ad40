"""CIFAR NASNet-A and MobileNetV2: registry, shapes at many sizes, parameter and FLOP facts."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from reswise.measure.flops import count_params, flops_table
from reswise.models import create_model, list_models, model_info
from reswise.models.cifar_mobilenet import CifarMobileNetV2, make_divisible
from reswise.models.cifar_nasnet import (
    REDUCTION,
    Cell,
    Depthwise,
    FactorizedReduction,
    NASNetCifar,
    Pool,
    _same_pads,
)

ZOO = ["cifar_nasnet_a", "cifar_nasnet_a_6_768", "cifar_mobilenetv2", "cifar_mobilenetv2_050"]
PAPER_DROPS = {28: 23.43, 24: 43.74, 20: 60.93, 16: 74.99, 12: 85.93}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # batch-2 inputs gain nothing from intra-op threads, and on a shared 2-core machine the
    # threads' barriers made these tests 100x slower (7 s instead of 25 ms per forward)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {n: create_model(n).model for n in ZOO}


def test_registered_with_cifar_facts():
    assert set(ZOO) <= set(list_models("cifar_*"))
    for n in ZOO:
        info = model_info(n)
        assert (info.task, info.input_size, info.num_classes) == ("cifar", 32, 10)
        # weights a model ships are its default, and reswise trained them on the JPEG copy
        assert info.default_weights == (info.weights[0].tag if info.weights else None)
        assert all(w.dataset == "CIFAR-10 (JPEG copy)" for w in info.weights)
        assert info.family == ("cifar_nasnet" if "nasnet" in n else "cifar_mobilenet")


@pytest.mark.parametrize("name", ZOO)
def test_output_shape_at_many_sizes(models, name):
    sizes = (32, 30, 28, 20, 18, 14, 12, 4) if "nasnet" in name else (32, 20, 12, 4)
    with torch.no_grad():
        for r in sizes:
            assert models[name](torch.randn(2, 3, r, r)).shape == (2, 10), r


def test_nasnet_6_768_matches_paper_size(models):
    m = models["cifar_nasnet_a_6_768"]
    assert m.num_features == 768  # the "@ 768" of the paper: penultimate width
    assert len(m.cells) == 6 * 3 + 2
    assert abs(count_params(m) / 3.3e6 - 1) < 0.03  # Zoph et al. 2018, Table 1: 3.3M


@pytest.mark.parametrize("name", ["cifar_nasnet_a", "cifar_nasnet_a_6_768"])
def test_nasnet_flops_drop_matches_paper_column(models, name):
    rows = flops_table(models[name], list(PAPER_DROPS), 32)
    for row in rows:
        assert abs(row["flops_drop_pct"] - PAPER_DROPS[row["resolution"]]) < 0.1, row


def test_same_padding_is_tf_same():
    x = torch.zeros(1, 1, 32, 31)
    assert _same_pads(x, 3, 2) == (1, 1, 0, 1)  # odd width: symmetric; even height: extra below
    assert _same_pads(x, 7, 2) == (3, 3, 2, 3)
    assert _same_pads(x, 5, 1) == (2, 2, 2, 2)


def test_strided_pooling_ignores_padding():
    ones = torch.ones(1, 2, 8, 7)
    assert torch.equal(Pool("avg", 2, 2, 2)(ones), torch.ones(1, 2, 4, 4))
    neg = -torch.rand(1, 2, 8, 7) - 1  # max over windows must never see a zero pad
    assert (Pool("max", 2, 2, 2)(neg) < 0).all()


@pytest.mark.parametrize("size", [8, 7])
def test_factorized_reduction_covers_both_subgrids(size):
    fr = FactorizedReduction(4, 6).eval()
    x = torch.randn(2, 4, size, size)
    y = fr(x)
    assert y.shape == (2, 6, (size + 1) // 2, (size + 1) // 2)
    x2 = x.clone()
    x2[:, :, 1, 1] += 10  # only the shifted (odd) path sees pixel (1, 1)
    d = (fr(x2) - y).abs().sum((0, 2, 3))
    assert d[:3].sum() == 0 and d[3:].sum() > 0


def test_normal_cell_keeps_size_and_concats_six_states():
    cell = Cell(False, prev_channels=24, channels=40, filters=8, prev_is_larger=False).eval()
    y = cell(torch.randn(2, 40, 9, 9), torch.randn(2, 24, 9, 9))
    assert y.shape == (2, 6 * 8, 9, 9)
    kernels = Counter(m.kernel_size[0] for m in cell.modules() if isinstance(m, Depthwise))
    assert kernels == {5: 4, 3: 6}  # sep5 x2, sep3 x3 branches, each separable conv applied twice


def test_reduction_cell_halves_size_and_concats_four_states():
    cell = Cell(True, prev_channels=48, channels=48, filters=16, prev_is_larger=False).eval()
    assert cell.spec is REDUCTION
    y = cell(torch.randn(2, 48, 9, 9), torch.randn(2, 48, 9, 9))
    assert y.shape == (2, 4 * 16, 5, 5)
    kernels = Counter(m.kernel_size[0] for m in cell.modules() if isinstance(m, Depthwise))
    assert kernels == {7: 4, 5: 4, 3: 2}


def test_cell_after_reduction_reduces_previous_input():
    cell = Cell(False, prev_channels=32, channels=64, filters=16, prev_is_larger=True).eval()
    y = cell(torch.randn(2, 64, 5, 5), torch.randn(2, 32, 9, 9))
    assert y.shape == (2, 96, 5, 5)


def test_nasnet_trains_under_bf16_autocast_with_drop_path():
    m = NASNetCifar(num_cells=1, num_filters=8, drop_path=0.3).train()
    assert m.cells[-1].drop_prob == pytest.approx(0.3) and m.cells[0].drop_prob < 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(torch.randn(2, 3, 12, 12)).float().logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_nasnet_builder_takes_n_and_f():
    m = create_model("cifar_nasnet_a", num_cells=1, num_filters=8, num_classes=7).model
    assert len(m.cells) == 5 and m.num_features == 6 * 4 * 8 and m.linear.out_features == 7


def test_mobilenet_width_and_stride(models):
    full, half = models["cifar_mobilenetv2"], models["cifar_mobilenetv2_050"]
    assert count_params(half) < 0.5 * count_params(full)
    assert full.num_features == half.num_features == 1280  # last conv unscaled below width 1
    with torch.no_grad():
        assert full.features(torch.randn(2, 3, 32, 32)).shape == (2, 1280, 4, 4)  # stride 8


@pytest.mark.parametrize("width", [1.0, 0.5, 0.75])
def test_mobilenet_matches_torchvision_widths(width):
    from torchvision.models import mobilenet_v2
    from torchvision.models._utils import _make_divisible

    assert all(make_divisible(c * width) == _make_divisible(c * width, 8) for c in range(8, 1300))
    # only strides differ from torchvision's ImageNet model, so parameter counts must agree
    tv = mobilenet_v2(num_classes=10, width_mult=width)
    assert count_params(CifarMobileNetV2(10, width)) == count_params(tv)
