"""What n calibration images can certify at all: the floor under every policy's drop bound.

Even when no calibration image is harmed, the exact one-sided bound on the share of harmed
images is the Clopper-Pearson bound for 0 successes in n trials, u(n) = 1 - (1 - confidence)^(1/n)
(about 3/n at 95 %). A bound below 100 u(n) points certifies nothing: 1 or 10 images cannot
certify a 1-point budget, so only the reference may be chosen.
"""

from __future__ import annotations

import numpy as np
import pytest

from reswise import Records
from reswise.choose.policies import calib_heldout_split, search_cascade, select_resolution
from reswise.choose.policies import cascade as cascade_mod
from reswise.records import SIGNALS, stats
from reswise.records.stats import _cp_upper_bisect, mcnemar_upper, paired_bootstrap_upper

FLOPS = {16: 250, 24: 560, 32: 1000}
C = 10  # classes
N = 1000  # images in the small-calibration records


def make_records(correct: dict[int, np.ndarray], conf: dict[int, np.ndarray] | None = None):
    """Records whose top-1 is right exactly where ``correct`` says, with top-1 prob ``conf``."""
    res = list(correct)
    n = len(correct[res[0]])
    labels = np.arange(n) % C
    other = (labels + 1) % C
    idx = np.zeros((len(res), n, 2), np.int32)
    prob = np.zeros((len(res), n, 2), np.float32)
    ent = np.zeros((len(res), n), np.float32)
    for i, r in enumerate(res):
        ok = np.asarray(correct[r], bool)
        p = np.full(n, 0.9) if conf is None else np.asarray(conf[r], float)
        idx[i, :, 0] = np.where(ok, labels, other)
        idx[i, :, 1] = np.where(ok, other, labels)
        prob[i, :, 0], prob[i, :, 1] = p, (1 - p) / 2
        ent[i] = 1 - p
    return Records(res, np.arange(n, dtype=np.int64), labels.astype(np.int64), idx, prob, ent)


def floor(n: int, confidence: float = 0.95) -> float:
    """100 u(n) by hand."""
    return 100.0 * (1.0 - (1.0 - confidence) ** (1.0 / n))


def harmless_on_calibration(n_calib: int) -> tuple[Records, float]:
    """16 and 24 agree with 32 on every calibration image but lose 10 % / 5 % of the held-out
    ones (the measured bug: a 0 bound from 1 image, a 9-point held-out drop); its calib_frac."""
    frac = n_calib / N
    _, held = calib_heldout_split(N, frac, seed=0)
    ok = {r: np.ones(N, bool) for r in (32, 24, 16)}
    ok[16][held[::10]] = False
    ok[24][held[::20]] = False
    return make_records(ok), frac


# --- the floor itself --------------------------------------------------------------------------


def test_floor_is_the_zero_harm_clopper_pearson_bound():
    assert stats.min_certifiable_drop(1, 0.95) == pytest.approx(95.0)
    assert stats.min_certifiable_drop(10, 0.95) == pytest.approx(25.886555, abs=1e-6)
    assert stats.min_certifiable_drop(300, 0.95) == pytest.approx(0.993608, abs=1e-6)
    for n in (1, 10, 300):
        for conf in (0.9, 0.95, 0.99):
            u = stats.min_certifiable_drop(n, conf)
            assert u == pytest.approx(floor(n, conf), rel=1e-12)
            assert u == pytest.approx(100 * _cp_upper_bisect(0, n, conf), abs=1e-7)
    assert stats.min_certifiable_drop(300, 0.95) == pytest.approx(3.0 / 300 * 100, rel=0.01)
    assert stats.min_certifiable_drop(0, 0.95) == 100.0


def test_images_needed_is_the_smallest_n_within_the_budget():
    assert stats.images_needed(1.0, 0.95) == 299  # 100 u(298) = 1.0002, 100 u(299) = 0.9969
    assert stats.images_needed(22.1, 0.95) == 12
    for conf in (0.8, 0.9, 0.95, 0.99):
        for budget in (0.01, 0.06, 0.5, 1.0, 2.5, 22.1, 79.9, 95.0, 99.0, 100.0, 150.0):
            n = stats.images_needed(budget, conf)
            assert stats.min_certifiable_drop(n, conf) <= budget
            assert n == 1 or stats.min_certifiable_drop(n - 1, conf) > budget
        for n in (1, 10, 300, 5000):  # round trip: the floor of n images needs n images
            assert stats.images_needed(stats.min_certifiable_drop(n, conf), conf) == n
    assert stats.images_needed(0.0, 0.95) is None  # no finite sample certifies a 0-point drop


# --- too few calibration images: only the reference ---------------------------------------------


@pytest.mark.parametrize("method", ["bootstrap", "exact"])
@pytest.mark.parametrize("n_calib", [1, 10])
def test_select_with_too_few_images_keeps_the_reference(n_calib, method):
    rec, frac = harmless_on_calibration(n_calib)
    out = select_resolution(rec, FLOPS, 32, max_drop=1.0, calib_frac=frac, method=method)
    assert out.n_calib == n_calib
    assert out.resolution == 32 and out.calib_upper_bound == 0.0 and out.acc_drop_pct == 0.0
    assert out.min_certifiable_drop == pytest.approx(floor(n_calib))
    assert out.too_few_images is True
    cand = {c.resolution: c for c in out.candidates}
    for r in (16, 24):
        assert cand[r].calib_drop_pct == 0.0  # harmless on calibration, yet not certified
        assert cand[r].calib_upper_bound == pytest.approx(floor(n_calib))
        assert not cand[r].qualifies
    assert cand[32].qualifies and cand[32].calib_upper_bound == 0.0
    assert out.warning.startswith(f"{n_calib} calibration image")
    assert "Use >= 299 calibration images for a 1.0-point budget" in out.warning
    d = out.to_dict()
    assert d["too_few_images"] is True and d["warning"] == out.warning
    assert d["min_certifiable_drop"] == out.min_certifiable_drop


@pytest.mark.parametrize("n_calib", [1, 10])
def test_cascade_with_too_few_images_keeps_the_reference(n_calib):
    rec, frac = harmless_on_calibration(n_calib)
    out = search_cascade(rec, FLOPS, 32, max_drop=1.0, calib_frac=frac, n_thresholds=10)
    assert out.n_calib == n_calib
    assert out.chain == [32] and out.thresholds == [] and out.signal is None
    assert out.calib_upper_bound == 0.0 and out.calib_normal_upper == 0.0
    assert out.acc_drop_pct == 0.0
    assert out.min_certifiable_drop == pytest.approx(floor(n_calib)) and out.too_few_images
    assert "Use >= 299 calibration images for a 1.0-point budget" in out.warning
    d = out.to_dict()
    assert d["too_few_images"] is True and d["warning"] == out.warning


def test_the_warning_says_what_would_be_needed():
    rec, frac = harmless_on_calibration(12)
    out = select_resolution(rec, FLOPS, 32, max_drop=1.0, calib_frac=frac)
    assert out.warning == (
        "12 calibration images can certify no drop below 22.1 points at 95 %; the reference was "
        "kept. Use >= 299 calibration images for a 1.0-point budget (more data or a larger "
        "--calib-frac)"
    )
    one, frac = harmless_on_calibration(1)
    out = search_cascade(one, FLOPS, 32, max_drop=2.5, confidence=0.9, calib_frac=frac)
    need = stats.images_needed(2.5, 0.9)
    assert out.warning == (
        "1 calibration image can certify no drop below 90.0 points at 90 %; the reference was "
        f"kept. Use >= {need} calibration images for a 2.5-point budget (more data or a larger "
        "--calib-frac)"
    )


def test_a_zero_budget_can_only_keep_the_reference():
    rec, frac = harmless_on_calibration(500)
    sel = select_resolution(rec, FLOPS, 32, max_drop=0.0, calib_frac=frac, method="exact")
    cas = search_cascade(rec, FLOPS, 32, max_drop=0.0, calib_frac=frac, n_thresholds=10)
    for out in (sel, cas):
        assert out.too_few_images and out.calib_upper_bound == 0.0
        assert out.min_certifiable_drop == pytest.approx(floor(500))
        assert "the reference was kept" in out.warning and "Use >=" not in out.warning
    assert sel.resolution == 32 and cas.chain == [32]


def test_200_images_cannot_certify_one_point_even_for_a_perfect_cascade():
    """16 is right and sure on 70 % of images, wrong and unsure on the rest: [16, 32] loses
    nothing, but 200 calibration images bound its drop by 1.49 points only."""
    n = 400
    easy = np.random.default_rng(0).random(n) < 0.7
    ok = {32: np.ones(n, bool), 24: easy.copy(), 16: easy.copy()}
    conf = {32: np.full(n, 0.9), 24: np.where(easy, 0.9, 0.8), 16: np.where(easy, 0.95, 0.2)}
    rec = make_records(ok, conf)
    out = search_cascade(rec, FLOPS, 32, max_drop=1.0)
    assert out.n_calib == 200 and out.chain == [32] and out.too_few_images
    assert out.min_certifiable_drop == pytest.approx(1.4867, abs=1e-4)
    assert "Use >= 299 calibration images" in out.warning
    ok2 = search_cascade(rec, FLOPS, 32, max_drop=1.5)
    assert ok2.chain == [16, 32] and not ok2.too_few_images and ok2.warning is None
    assert ok2.calib_drop_pct == 0.0
    assert ok2.calib_upper_bound == pytest.approx(floor(200))  # floored: the raw bound is 0
    assert ok2.calib_normal_upper == pytest.approx(floor(200))


def test_the_normal_screen_admits_nothing_the_floor_rejects():
    rec, frac = harmless_on_calibration(10)
    calib, _ = calib_heldout_split(N, frac, seed=0)
    cal = rec.subset(calib)
    found, tried = cascade_mod._screen(
        cal, FLOPS, 32, SIGNALS, max_drop=1.0, confidence=0.95, max_len=3, n_thresholds=10
    )
    assert found == [] and tried > 3
    found, _ = cascade_mod._screen(
        cal, FLOPS, 32, SIGNALS, max_drop=30.0, confidence=0.95, max_len=3, n_thresholds=10
    )
    assert found and found[0][3] == (16,)  # 25.9-point floor: within a 30-point budget


# --- enough images: the floor does not change the choice ---------------------------------------


def nearly_harmless(n: int = 10_000) -> Records:
    """16 loses 3 images in 10 000 and 24 none: a truly ~0 drop."""
    ok = {r: np.ones(n, bool) for r in (32, 24, 16)}
    ok[16][np.random.default_rng(1).choice(n, 3, replace=False)] = False
    return make_records(ok)


@pytest.mark.parametrize("method", ["bootstrap", "exact"])
def test_with_5000_images_the_floor_leaves_the_choice_alone(method):
    rec = nearly_harmless()
    out = select_resolution(rec, FLOPS, 32, max_drop=1.0, method=method)
    assert out.n_calib == 5000 and out.resolution == 16
    assert out.min_certifiable_drop == pytest.approx(0.0599, abs=1e-4)
    assert out.too_few_images is False and out.warning is None
    calib, _ = calib_heldout_split(10_000, 0.5, seed=0)
    ref, new = rec.correct(32)[calib], rec.correct(16)[calib]
    raw = (
        paired_bootstrap_upper(ref, new, 0.95)
        if method == "bootstrap"
        else mcnemar_upper(ref, new, 0.95)
    )
    assert raw < 1.0 and out.calib_upper_bound == pytest.approx(max(raw, floor(5000)))
    cand = {c.resolution: c for c in out.candidates}
    assert cand[24].calib_upper_bound == pytest.approx(floor(5000))  # raw bound 0: floored
    assert cand[32].calib_upper_bound == 0.0
    assert all(c.qualifies for c in out.candidates)
    d = out.to_dict()
    assert d["too_few_images"] is False and d["warning"] is None


def test_with_5000_images_the_cascade_floor_leaves_the_choice_alone():
    rec = nearly_harmless()
    out = search_cascade(rec, FLOPS, 32, max_drop=1.0, max_len=2, n_thresholds=10)
    assert out.n_calib == 5000 and out.chain == [16] and out.signal is None
    assert out.too_few_images is False and out.warning is None
    assert out.min_certifiable_drop == pytest.approx(floor(5000))
    assert floor(5000) <= out.calib_normal_upper <= 1.0
    assert floor(5000) <= out.calib_upper_bound <= 1.0
