"""Resolution policies on synthetic records whose right answers are known by hand."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reswise import Records, ReswiseError
from reswise.choose.policies import (
    calib_heldout_split,
    evaluate_cascade,
    headroom,
    oracle,
    random_assignment,
    random_resolution,
    search_cascade,
    select_resolution,
)
from reswise.choose.policies.cascade import _candidates
from reswise.data import ResizePolicy, normalizer, to_input
from reswise.measure.bn_recal import (
    load_bn_states,
    recalibrate_all,
    recalibrate_bn,
    save_bn_checkpoint,
)
from reswise.records.stats import _cp_upper_bisect, mcnemar_upper, paired_bootstrap_upper

FLOPS = {16: 250, 24: 560, 32: 1000}
C = 10  # classes


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
        ent[i] = 1 - p  # lower entropy where more confident
    return Records(res, np.arange(n, dtype=np.int64), labels.astype(np.int64), idx, prob, ent)


def altered(rec: Records, where: np.ndarray, res: int) -> Records:
    """A copy with the predictions at ``res`` on images ``where`` swapped (right <-> wrong)."""
    new = copy.deepcopy(rec)
    i = new.row(res)
    new.topk_idx[i, where] = new.topk_idx[i, where][:, ::-1]
    return new


def random_records(n: int = 400, seed: int = 0) -> Records:
    rng = np.random.default_rng(seed)
    ease = rng.random(n)  # easy images are right at every resolution and confident
    correct, conf = {}, {}
    for r, need in ((32, 0.1), (24, 0.2), (16, 0.4)):
        correct[r] = ease + 0.1 * rng.standard_normal(n) > need
        conf[r] = np.clip(0.3 + 0.6 * ease + 0.1 * rng.standard_normal(n), 0.11, 0.99)
    return make_records(correct, conf)


# --- split -------------------------------------------------------------------------------------


def test_split_is_disjoint_covering_sorted_and_seeded():
    a, b = calib_heldout_split(101, 0.3, seed=4)
    assert len(a) == 30 and len(b) == 71
    assert np.intersect1d(a, b).size == 0
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(101))
    assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)
    a2, _ = calib_heldout_split(101, 0.3, seed=4)
    a3, _ = calib_heldout_split(101, 0.3, seed=5)
    assert np.array_equal(a, a2) and not np.array_equal(a, a3)
    with pytest.raises(ReswiseError):
        calib_heldout_split(10, 1.0)


# --- statistics --------------------------------------------------------------------------------


def pairs(n: int, b: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired 0/1 outcomes with b (ref right, new wrong) and c (ref wrong, new right)."""
    ref, new = np.ones(n, bool), np.ones(n, bool)
    new[:b] = False
    ref[b : b + c] = False
    return ref, new


def test_bounds_exceed_the_point_estimate_and_shrink_with_n():
    for bound in (
        lambda r, w: paired_bootstrap_upper(r, w, 0.95),
        lambda r, w: mcnemar_upper(r, w, 0.95),
    ):
        small, large = pairs(100, 10, 2), pairs(10000, 1000, 200)
        point = 8.0  # (b - c) / n in points, the same for both sizes
        u_small, u_large = bound(*small), bound(*large)
        assert u_small > u_large > point
        assert u_small - point > 3 * (u_large - point)


def test_bootstrap_matches_naive_resampling_and_extremes():
    ref, new = pairs(200, 16, 6)
    d = ref.astype(float) - new
    rng = np.random.default_rng(1)
    naive = 100 * np.quantile(d[rng.integers(0, 200, (4000, 200))].mean(1), 0.95)
    assert paired_bootstrap_upper(ref, new, 0.95, n_boot=4000) == pytest.approx(naive, abs=0.6)
    assert paired_bootstrap_upper(ref, ref, 0.95) == 0.0
    assert paired_bootstrap_upper(*pairs(50, 50, 0), 0.95) == 100.0
    assert paired_bootstrap_upper(ref, new, 0.95, seed=3) == paired_bootstrap_upper(
        ref, new, 0.95, seed=3
    )


def test_clopper_pearson_bisection_matches_closed_forms():
    for m in (1, 7, 40):
        assert _cp_upper_bisect(0, m, 0.95) == pytest.approx(1 - 0.05 ** (1 / m), abs=1e-9)
        assert _cp_upper_bisect(m - 1, m, 0.9) == pytest.approx(0.9 ** (1 / m), abs=1e-9)
    assert _cp_upper_bisect(5, 5, 0.95) == 1.0


def test_mcnemar_by_hand():
    # b = 9, c = 1: the upper bound on q = b/(b+c) solves 1 - q^10 = 0.05
    q = 0.95 ** (1 / 10)
    assert mcnemar_upper(*pairs(50, 9, 1), 0.95) == pytest.approx(100 * 10 * (2 * q - 1) / 50)
    # no discordant pair carries no evidence of a drop; only b ones: bound = b / n
    assert mcnemar_upper(*pairs(50, 0, 0), 0.95) == 0.0
    assert mcnemar_upper(*pairs(50, 3, 0), 0.95) == pytest.approx(6.0)
    with pytest.raises(ReswiseError):
        mcnemar_upper(*pairs(50, 3, 0), 1.0)


# --- select ------------------------------------------------------------------------------------


def budget_records() -> tuple[Records, np.ndarray, np.ndarray]:
    """On calibration: 24 has b=4, c=1; 16 has b=5, c=1. On held-out: 24 wrong on 5 images."""
    calib, held = calib_heldout_split(200, 0.5, seed=0)
    ok = {r: np.ones(200, bool) for r in (32, 24, 16)}
    ok[24][calib[:4]] = False
    ok[16][calib[:5]] = False
    for r in (24, 16):  # one image where the small resolution is right and 32 wrong
        ok[r][calib[10]] = True
    ok[32][calib[10]] = False
    ok[24][held[:5]] = False
    return make_records(ok), calib, held


def test_select_exact_takes_the_resolution_exactly_within_the_budget():
    rec, _, _ = budget_records()
    b24 = 100 * 5 * (2 * 0.95 ** (1 / 5) - 1) / 100  # exact bound for b=4, c=1, n=100
    b16 = 100 * 6 * (2 * 0.95 ** (1 / 6) - 1) / 100  # b=5, c=1: just outside
    out = select_resolution(rec, FLOPS, 32, max_drop=b24, method="exact")
    assert out["resolution"] == 24 and out["method"] == "exact"
    assert out["calib_upper_bound"] == pytest.approx(b24)
    cand = {c["resolution"]: c for c in out["candidates"]}
    assert cand[16]["calib_upper_bound"] == pytest.approx(b16) and not cand[16]["qualifies"]
    assert cand[32]["qualifies"] and cand[32]["calib_upper_bound"] == 0.0
    assert out["flops_drop_pct"] == pytest.approx(44.0)
    assert out["acc_drop_pct"] == pytest.approx(5.0)  # held-out: 5 of 100 images lost
    assert out["n_calib"] == 100 and out["n_heldout"] == 100
    assert out["acc_drop_ci"][0] < 5.0 < out["acc_drop_ci"][1]
    assert (
        select_resolution(rec, FLOPS, 32, max_drop=b24 - 1e-6, method="exact")["resolution"] == 32
    )
    assert select_resolution(rec, FLOPS, 32, max_drop=b16, method="exact")["resolution"] == 16


def test_select_bootstrap_default():
    rec, _, _ = budget_records()
    out = select_resolution(rec, FLOPS, 32, max_drop=10.0)
    assert out["method"] == "bootstrap" and out["resolution"] == 16
    for c in out["candidates"]:
        assert c["calib_upper_bound"] >= c["calib_drop_pct"]
    assert select_resolution(rec, FLOPS, 32, max_drop=0.0)["resolution"] == 32
    with pytest.raises(ReswiseError):
        select_resolution(rec, FLOPS, 32, max_drop=1.0, method="magic")
    with pytest.raises(ReswiseError):
        select_resolution(rec, {32: 1000, 24: 560}, 32, max_drop=1.0)


def test_select_chooses_on_calibration_images_only():
    rec = random_records()
    calib, held = calib_heldout_split(400, 0.5, seed=0)
    base = select_resolution(rec, FLOPS, 32, max_drop=12.0)
    assert base["resolution"] == 24
    moved = select_resolution(altered(rec, held, 16), FLOPS, 32, max_drop=12.0)
    keys = ("resolution", "calib_upper_bound", "calib_drop_pct", "candidates")
    assert all(moved[k] == base[k] for k in keys)
    assert altered(rec, held, 24).correct(24)[held].mean() != rec.correct(24)[held].mean()
    moved = select_resolution(altered(rec, held, 24), FLOPS, 32, max_drop=12.0)
    assert moved["resolution"] == 24 and moved["top1"] != base["top1"]
    # the same change on calibration images changes the choice
    wrong16 = calib[~rec.correct(16)[calib]]
    fixed = select_resolution(altered(rec, wrong16, 16), FLOPS, 32, max_drop=12.0)
    assert fixed["resolution"] == 16


# --- random resolution -------------------------------------------------------------------------


def test_random_resolution_is_seeded_and_respects_weights():
    rec = random_records(2000)
    a = random_resolution(rec, FLOPS, 32, seed=1)
    assert a == random_resolution(rec, FLOPS, 32, seed=1)
    draw1, draw2 = (random_assignment(2000, [32, 24, 16], s) for s in (1, 2))
    assert not np.array_equal(draw1, draw2)
    one = random_resolution(rec, FLOPS, 32, seed=1, weights=[0, 1, 0])
    assert one["share_pct"] == [0.0, 100.0, 0.0]
    assert one["flops_drop_pct"] == pytest.approx(44.0)
    assert one["top1"] == pytest.approx(100 * rec.correct(24).mean())
    w = random_resolution(rec, FLOPS, 32, seed=3, weights=[3, 0, 1])
    assert w["share_pct"][0] == pytest.approx(75, abs=3) and w["share_pct"][1] == 0.0
    assert w["expected_flops_drop_pct"] == pytest.approx(
        100 * (1 - (0.75 * 1000 + 0.25 * 250) / 1000)
    )
    assert w["flops_drop_pct"] == pytest.approx(w["expected_flops_drop_pct"], abs=3)
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ReswiseError):
            random_resolution(rec, FLOPS, 32, seed=0, weights=bad)


# --- cascade -----------------------------------------------------------------------------------


def test_two_stage_cascade_by_hand():
    conf16 = np.array([0.9] * 6 + [0.3] * 4)
    ok16 = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    rec = make_records({32: np.ones(10, bool), 16: ok16}, {32: np.full(10, 0.9), 16: conf16})
    out = evaluate_cascade(rec, FLOPS, 32, [16, 32], [0.5], "max_softmax")
    # 6 images stop at 16 (250 each); 4 pay 250 + 1000
    assert out["mean_flops"] == pytest.approx((6 * 250 + 4 * 1250) / 10)
    assert out["flops_drop_pct"] == pytest.approx(35.0)
    assert out["stage_share_pct"] == [60.0, 40.0]
    assert out["top1"] == pytest.approx(90.0) and out["acc_drop_pct"] == pytest.approx(10.0)
    sub = evaluate_cascade(rec, FLOPS, 32, [16, 32], [0.5], "max_softmax", idx=np.arange(6, 10))
    assert sub["flops_drop_pct"] == pytest.approx(-25.0) and sub["top1"] == 100.0
    with pytest.raises(ReswiseError):
        evaluate_cascade(rec, FLOPS, 32, [32, 16], [0.5], "max_softmax")
    with pytest.raises(ReswiseError):
        evaluate_cascade(rec, FLOPS, 32, [16, 32], [], "max_softmax")


def separable_records(n: int = 400) -> Records:
    """16 is right and sure on 70% of images, wrong and unsure on the rest; 32 always right."""
    easy = np.random.default_rng(0).random(n) < 0.7
    ok = {32: np.ones(n, bool), 24: easy.copy(), 16: easy.copy()}
    conf = {32: np.full(n, 0.9), 24: np.where(easy, 0.9, 0.8), 16: np.where(easy, 0.95, 0.2)}
    return make_records(ok, conf)


def test_search_finds_the_separating_cascade():
    # 200 calibration images certify no drop below 1.49 points at 95 %: a 2-point budget
    rec = separable_records()
    calib, held = calib_heldout_split(400, 0.5, seed=0)
    out = search_cascade(rec, FLOPS, 32, max_drop=2.0)
    assert out["chain"] == [16, 32] and 0.2 < out["thresholds"][0] <= 0.95
    assert out["calib_drop_pct"] == 0.0 and out["acc_drop_pct"] == 0.0
    hard = 1 - rec.correct(16)[held].mean()
    assert out["flops_drop_pct"] == pytest.approx(100 * (1 - (250 + 1000 * hard) / 1000))
    assert out["stage_share_pct"][1] == pytest.approx(100 * hard)
    assert out["n_calib"] + out["n_heldout"] == 400
    # held-out changes leave the choice alone; calibration changes move it
    same = search_cascade(altered(rec, held[:40], 16), FLOPS, 32, max_drop=2.0)
    for k in ("chain", "thresholds", "signal", "calib_upper_bound", "calib_flops_drop_pct"):
        assert same[k] == out[k]
    assert same["top1"] < out["top1"]
    easy_cal = calib[rec.correct(16)[calib]]
    moved = search_cascade(altered(rec, easy_cal[:30], 16), FLOPS, 32, max_drop=2.0)
    assert moved["chain"] != [16, 32] or moved["thresholds"] != out["thresholds"]


def test_search_figures_match_direct_evaluation_and_brute_force():
    rec = random_records(300, seed=2)
    calib, _ = calib_heldout_split(300, 0.5, seed=0)
    out = search_cascade(rec, FLOPS, 32, max_drop=3.0, max_len=2, signal="margin", n_thresholds=20)
    direct = evaluate_cascade(rec, FLOPS, 32, out["chain"], out["thresholds"], "margin", idx=calib)
    assert direct["flops_drop_pct"] == pytest.approx(out["calib_flops_drop_pct"])
    assert direct["acc_drop_pct"] == pytest.approx(out["calib_drop_pct"])
    assert out["calib_upper_bound"] <= 3.0
    # brute force over the same candidate settings: nothing cheaper passes the bootstrap bound
    cal = rec.subset(calib)
    ref = cal.correct(32)
    best = max(evaluate_cascade(cal, FLOPS, 32, [r], [])["flops_drop_pct"] for r in (32,))
    for lo, hi in itertools.combinations([16, 24, 32], 2):
        if cal.correct(hi).mean() < ref.mean():
            continue
        for t in _candidates(cal.confidence(lo, "margin").astype(np.float64), 20):
            e = evaluate_cascade(cal, FLOPS, 32, [lo, hi], [t], "margin")
            ok = np.where(cal.confidence(lo, "margin") >= t, cal.correct(lo), cal.correct(hi))
            if paired_bootstrap_upper(ref, ok, 0.95) <= 3.0:
                best = max(best, e["flops_drop_pct"])
    for r in (16, 24):
        if paired_bootstrap_upper(ref, cal.correct(r), 0.95) <= 3.0:
            best = max(best, 100 * (1 - FLOPS[r] / 1000))
    assert out["calib_flops_drop_pct"] == pytest.approx(best)


def test_three_stage_search_matches_direct_evaluation():
    rec = random_records(300, seed=3)
    calib, _ = calib_heldout_split(300, 0.5, seed=0)
    out = search_cascade(rec, FLOPS, 32, max_drop=2.0, signal="entropy", n_thresholds=16)
    direct = evaluate_cascade(rec, FLOPS, 32, out["chain"], out["thresholds"], "entropy", idx=calib)
    assert direct["flops_drop_pct"] == pytest.approx(out["calib_flops_drop_pct"])
    assert out["calib_flops_drop_pct"] > 0 and out["calib_upper_bound"] <= 2.0


# --- oracle ------------------------------------------------------------------------------------


def test_oracle_by_hand():
    ok = {
        32: np.array([1, 1, 1, 0, 0], bool),
        24: np.array([1, 1, 0, 0, 0], bool),
        16: np.array([1, 0, 0, 1, 0], bool),
    }
    out = oracle(make_records(ok), FLOPS, 32)
    # costs: 250, 560, 1000, 250, and 1000 for the image nothing gets right
    assert out["mean_flops"] == pytest.approx(612.0)
    assert out["flops_drop_pct"] == pytest.approx(38.8)
    assert out["top1"] == pytest.approx(80.0) and out["reference_top1"] == pytest.approx(60.0)
    assert out["acc_drop_pct"] == pytest.approx(-20.0) and out["none_right_pct"] == 20.0
    assert out["uses_labels"] is True and out["resolutions"] == [16, 24, 32]
    assert out["share_pct"] == [40.0, 20.0, 20.0]
    assert oracle(make_records(ok), FLOPS, 32, idx=np.array([2, 4]))["flops_drop_pct"] == 0.0


# --- BN recalibration --------------------------------------------------------------------------


class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.b1.weight.uniform_(0.5, 1.5)
            self.b1.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
POLICY = ResizePolicy("full")


def bn_inputs(model: TinyBN, images: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of both BN layers, computed directly with full-batch BN statistics."""
    x = to_input(POLICY(images, r), normalizer(MEAN, STD)).double()
    m = copy.deepcopy(model).double()
    h1 = m.c1(x)
    h2 = m.c2(F.relu(F.batch_norm(h1, None, None, m.b1.weight, m.b1.bias, training=True)))
    return h1, h2


def test_bn_recalibration_gives_the_true_statistics():
    model = TinyBN()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h1, h2 = bn_inputs(model, images, 12)
    # batches of 4, 4, 2: averaging per-batch statistics would be off; the first BN is exact
    st = recalibrate_bn(model, images, 12, POLICY, MEAN, STD, num_batches=None, batch_size=4)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert set(st) == {f"b{i}.{b}" for i in (1, 2) for b in buffers}
    assert torch.allclose(st["b1.running_mean"].double(), h1.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(st["b1.running_var"].double(), h1.var((0, 2, 3)), atol=1e-5)
    assert int(st["b1.num_batches_tracked"]) == 3
    # one batch: the second BN's inputs are those of full-batch normalisation
    st = recalibrate_bn(model, images, 12, POLICY, MEAN, STD, num_batches=None, batch_size=64)
    assert torch.allclose(st["b2.running_mean"].double(), h2.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(st["b2.running_var"].double(), h2.var((0, 2, 3)), atol=1e-5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.b1.momentum == 0.1


def test_recalibrate_all_and_checkpoint_round_trip(tmp_path):
    model = TinyBN()
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    states = recalibrate_all(model, images, [16, 8], POLICY, MEAN, STD, calib_size=8, batch_size=4)
    one = recalibrate_bn(model, images, 8, POLICY, MEAN, STD, num_batches=2, batch_size=4)
    assert all(torch.allclose(states[8][k].float(), one[k].float()) for k in one)
    assert not torch.allclose(states[16]["b1.running_var"], states[8]["b1.running_var"])
    path = tmp_path / "bn.pt"
    save_bn_checkpoint(model, states, path)
    sd = torch.load(path, weights_only=True)
    assert "reswise.bn.8.b2.running_var" in sd and "b1.weight" in sd
    back = load_bn_states(sd)
    assert set(back) == {16, 8}
    assert all(torch.equal(back[r][k], states[r][k]) for r in states for k in states[r])
    with pytest.raises(ReswiseError):
        recalibrate_bn(model, images.float(), 8, POLICY, MEAN, STD, None)


# --- headroom ----------------------------------------------------------------------------------


def test_headroom_counts_two_stage_savings_by_hand():
    """100 images; at 16: 70 right and confident, 30 wrong (20 of them right at 32)."""
    n = 100
    ok32 = np.ones(n, bool)
    ok32[80:90] = False  # wrong at 32 too: free to answer at 16
    ok16 = np.zeros(n, bool)
    ok16[:70] = True
    conf16 = np.where(ok16, 0.9, 0.2)
    conf16[70:72] = 0.95  # two harmful images look most confident of all
    rec = make_records({32: ok32, 16: ok16}, {32: np.full(n, 0.9), 16: conf16})
    (row,) = headroom(rec, {16: 250, 32: 1000}, 32, max_drop=2.0)
    assert row["resolution"] == 16 and row["stage_cost_pct"] == pytest.approx(25.0)
    sig = row["max_softmax"]
    # ranked: 2 harmful (net 2), 70 right (net 2), then 28 tied at 0.2: accepting them costs 18
    assert sig["accept_pct"] == pytest.approx(72.0)
    assert sig["flops_drop_pct"] == pytest.approx(72.0 - 25.0)
    # perfect ranking: the 70 right + 10 wrong-at-both, then 2 harmful within the budget
    assert row["perfect"]["accept_pct"] == pytest.approx(82.0)
    # AUROC: positives (right at 16) beat all negatives but the two 0.95 ones
    assert sig["auroc"] == pytest.approx(1 - 2 / 30)
    # with no budget the two confident harmful images block every threshold
    (row0,) = headroom(rec, {16: 250, 32: 1000}, 32, max_drop=0.0)
    assert row0["max_softmax"]["accept_pct"] == 0.0 and row0["perfect"]["accept_pct"] == 80.0
