"""EfficientNet-Lite1/2 beside Lite0: TF preprocessing, exact 'same' padding at every size, the
FLOPs convention against TF's published MAdds, and accuracy on the real ImageNet sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reswise import create_model, model_info
from reswise.measure.flops import flops_table

from .conftest import IMAGENET_SAMPLE

pytest.importorskip("efficientnet_lite_pytorch")

NATIVE = {0: 224, 1: 240, 2: 260}
# TF's EfficientNet-Lite README (tensorflow/tpu models/official/efficientnet/lite): MAdds
PUBLISHED_MADDS = {0: 407e6, 1: 631e6, 2: 899e6}


@pytest.mark.parametrize("i", [0, 1, 2])
def test_lite_models_carry_tf_preprocessing(i):
    info = model_info(f"efficientnet_lite{i}")
    size = NATIVE[i]
    assert info.input_size == size and info.mean == info.std == (0.5, 0.5, 0.5)
    # TF evaluates a centre crop of size / (size + 32) of the short side: 240 from 272, ...
    assert round(size / info.crop_pct) == size + 32
    assert info.eval_policy().kind == "crop"


def test_counts_follow_one_convention_against_the_published_madds():
    """reswise counts convolutions and matrix multiplies only (no BN, activations, pooling,
    additions), so it sits below TF's MAdds by the same share for the three models."""
    ratios = {}
    for i, size in NATIVE.items():
        lm = create_model(f"efficientnet_lite{i}")
        macs = flops_table(lm.model, [size], size)[0]["macs"]
        ratios[i] = 100.0 * macs / PUBLISHED_MADDS[i]
    assert ratios[0] * PUBLISHED_MADDS[0] / 100 == pytest.approx(385.19e6, abs=0.01e6)
    assert 90.0 < min(ratios.values()) and max(ratios.values()) < 100.0
    assert max(ratios.values()) - min(ratios.values()) < 1.0, ratios


def _tf_same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    """TF 'SAME': total padding so the output is ceil(n / s); the odd pixel goes after."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("i", [1, 2])
@pytest.mark.parametrize("size", [200, 227])  # not native, one odd
def test_padding_is_exact_at_non_native_sizes(i, size):
    from efficientnet_lite_pytorch import EfficientNet

    lm = create_model(f"efficientnet_lite{i}", pretrained=True)
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    # 1) the stem against TF's formula written out here
    stem = lm.model._conv_stem
    lo, hi = _tf_same_pad(size, 3, 2)
    want = F.conv2d(F.pad(x, (lo, hi, lo, hi)), stem.weight, stride=2)
    assert torch.allclose(stem(x), want, atol=1e-5)
    # 2) the whole network against the package's static padding computed for this very size
    own = EfficientNet.from_name(f"efficientnet-lite{i}", image_size=size).eval()
    own.load_state_dict(lm.model.state_dict())
    native = EfficientNet.from_name(f"efficientnet-lite{i}").eval()  # padded for its native size
    native.load_state_dict(lm.model.state_dict())
    with torch.no_grad():
        y = lm.model(x)
        assert torch.allclose(y, own(x), atol=1e-4)
        assert not torch.allclose(y, native(x), atol=1e-2)  # the bug dynamic padding avoids


@pytest.mark.slow
@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason=f"{IMAGENET_SAMPLE} not present")
@pytest.mark.parametrize("i", [1, 2])
def test_lite_scores_on_the_real_sample_at_native_size(tmp_path, i):
    """300 of the 1 000 sample images (seeded): 89.4 / 90.8 % on all 1 000; a preprocessing
    mistake (ImageNet mean/std instead of 0.5) costs about 10 points."""
    from reswise.pipeline import SweepConfig, run_sweep

    cfg = SweepConfig(model=f"efficientnet_lite{i}", dataset="imagenet",
                      data_root=str(IMAGENET_SAMPLE), resolutions=[NATIVE[i]], limit=300,
                      backend="onnxruntime",  # eager's depthwise convolutions: ~5x slower here
                      out=str(tmp_path / "run"))  # fmt: skip
    run = run_sweep(cfg, write=False)
    assert run.rows[0]["top1"] >= 85.0, run.rows[0]
