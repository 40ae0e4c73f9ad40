"""FLOP counting against hand-computed networks and the study's ResNet-50 column."""

from __future__ import annotations

import pytest
from torch import nn

from reswise import FlopAnalysis, ReswiseError, create_model, flops_table


def test_plain_grouped_and_depthwise_conv_and_linear_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*8 * 8*3*9 MACs
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 8*8 * 8*9
        nn.Conv2d(8, 16, 1, groups=2),  # grouped: 8*8 * 16*4
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),  # 160
    )
    a = FlopAnalysis(net, 8)
    macs = 64 * 8 * 27 + 64 * 8 * 9 + 64 * 16 * 4 + 160
    assert a.macs() == macs and a.total() == 2 * macs
    assert a.by_operator() == {"convolution": 2 * (macs - 160), "addmm": 320}
    mods = a.by_module()
    assert mods["0"] == 2 * 64 * 8 * 27 and mods["5"] == 320 and mods[""] == a.total()


def test_resnet50_reproduces_the_study_flops_drop_column():
    m = create_model("resnet50").model
    rows = flops_table(m, [224, 210, 196, 182, 168, 154, 140], 224)
    seed = [3.90, 14.72, 29.26, 38.49, 49.50, 57.26]
    for row, s in zip(rows[1:], seed):
        assert abs(row["flops_drop_pct"] - s) <= 0.5, (row["resolution"], row["flops_drop_pct"])
    assert rows[0]["flops_drop_pct"] == 0.0
    assert rows[0]["macs"] == pytest.approx(4.09e9, rel=0.01)  # torchvision's published 4.09 GMACs


def test_cifar_resnet_drop_is_nearly_quadratic():
    m = create_model("cifar_resnet20").model
    rows = {r["resolution"]: r for r in flops_table(m, [32, 16], 32)}
    assert rows[32]["macs"] == pytest.approx(40.55e6, rel=0.01)  # He et al.'s ResNet-20
    assert 74.9 < rows[16]["flops_drop_pct"] < 75.0  # the linear head does not shrink


def test_input_the_network_cannot_take_is_a_clear_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 5))
    with pytest.raises(ReswiseError, match="cannot take 6x6 inputs"):
        FlopAnalysis(net, 6).total()
    assert FlopAnalysis(net, 9).total() > 0


def test_flops_are_counted_where_the_weights_live():
    """A model already moved to another device (a GPU in training; 'meta' here) is counted there."""
    lm = create_model("cifar_resnet20", pretrained=False)
    on_cpu = flops_table(lm.model, [32, 16])
    on_meta = flops_table(lm.model.to("meta"), [32, 16])
    assert [r["flops"] for r in on_meta] == [r["flops"] for r in on_cpu]
