"""The policies' API: torch-free import, keyword-only budgets, typed results that read like dicts."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from reswise.choose.compare import compare
from reswise.choose.policies import (
    evaluate_cascade,
    headroom,
    oracle,
    random_resolution,
    search_cascade,
    select_resolution,
)
from reswise.choose.policies.results import (
    CascadeEval,
    CascadeResult,
    CompareResult,
    OracleResult,
    RandomResult,
    SelectCandidate,
    SelectResult,
)
from reswise.errors import ReswiseError
from reswise.records import Records

FLOPS = {16: 250, 24: 560, 32: 1000}

# the keys (in order) of the dicts the policies returned before they returned typed results;
# select and cascade results then gained, last, what their calibration images can certify
DROP = ["top1", "reference_top1", "acc_drop_pct", "acc_drop_ci"]
FLOOR = ["min_certifiable_drop", "too_few_images", "warning"]
SELECT_KEYS = ["resolution", "reference", "max_drop", "confidence", "method", "flops",
               "flops_drop_pct", "calib_drop_pct", "calib_upper_bound", "n_calib", "n_heldout",
               *DROP, "candidates", *FLOOR]  # fmt: skip
CANDIDATE_KEYS = ["resolution", "flops", "flops_drop_pct", "calib_top1", "calib_drop_pct",
                  "calib_upper_bound", "qualifies"]  # fmt: skip
EVAL_KEYS = ["chain", "thresholds", "signal", "mean_flops", "flops_drop_pct", "stage_share_pct",
             "n", *DROP]  # fmt: skip
CASCADE_KEYS = ["chain", "thresholds", "signal", "mean_flops", "flops_drop_pct",
                "stage_share_pct", *DROP, "reference", "max_drop", "confidence", "n_calib",
                "calib_flops_drop_pct", "calib_top1", "calib_drop_pct", "calib_upper_bound",
                "calib_normal_upper", "settings_searched", "n_heldout", *FLOOR]  # fmt: skip
RANDOM_KEYS = ["seed", "choices", "weights", "share_pct", "mean_flops", "flops_drop_pct",
               "expected_flops_drop_pct", "n", *DROP]  # fmt: skip
ORACLE_KEYS = ["uses_labels", "note", "mean_flops", "flops_drop_pct", "none_right_pct",
               "resolutions", "share_pct", "n", *DROP]  # fmt: skip
COMPARE_TAIL = ["reference", "max_drop", "confidence", "n_calib", "n_heldout", "seed", "rows"]


def records(n: int = 300, seed: int = 0) -> Records:
    """Easy images are right at every resolution and confident; small resolutions lose more."""
    rng = np.random.default_rng(seed)
    ease = rng.random(n)
    labels = np.arange(n) % 10
    res = [32, 24, 16]
    idx = np.zeros((3, n, 2), np.int32)
    prob = np.zeros((3, n, 2), np.float32)
    ent = np.zeros((3, n), np.float32)
    for i, need in enumerate((0.1, 0.2, 0.4)):
        ok = ease + 0.1 * rng.standard_normal(n) > need
        p = np.clip(0.3 + 0.6 * ease + 0.1 * rng.standard_normal(n), 0.11, 0.99)
        idx[i, :, 0] = np.where(ok, labels, (labels + 1) % 10)
        idx[i, :, 1] = np.where(ok, (labels + 1) % 10, labels)
        prob[i, :, 0], prob[i, :, 1] = p, (1 - p) / 2
        ent[i] = 1 - p
    return Records(res, np.arange(n, dtype=np.int64), labels.astype(np.int64), idx, prob, ent)


def test_importing_the_policies_loads_no_torch():
    code = "import reswise.policies, reswise.choose.compare, sys; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_budgets_and_subsets_are_keyword_only():
    rec = records()
    with pytest.raises(TypeError):
        select_resolution(rec, FLOPS, 32, 1.0)
    with pytest.raises(TypeError):
        search_cascade(rec, FLOPS, 32, 1.0)
    with pytest.raises(TypeError):
        random_resolution(rec, FLOPS, 32, 0)
    with pytest.raises(TypeError):
        oracle(rec, FLOPS, 32, np.arange(10))
    with pytest.raises(TypeError):
        headroom(rec, FLOPS, 32, 1.0)
    with pytest.raises(TypeError):
        compare(rec, FLOPS, 32, 1.0)
    with pytest.raises(TypeError):
        evaluate_cascade(rec, FLOPS, 32, [16, 32], [0.5], "margin", np.arange(10))


def test_results_keep_the_keys_of_the_old_dicts():
    rec = records()
    sel = select_resolution(rec, FLOPS, 32, max_drop=3.0)
    assert isinstance(sel, SelectResult) and list(sel.to_dict()) == SELECT_KEYS
    assert all(isinstance(c, SelectCandidate) for c in sel.candidates)
    assert [list(c) for c in sel.to_dict()["candidates"]] == [CANDIDATE_KEYS] * 3
    cas = search_cascade(rec, FLOPS, 32, max_drop=3.0, n_thresholds=10)
    assert isinstance(cas, CascadeResult) and list(cas.to_dict()) == CASCADE_KEYS
    ev = evaluate_cascade(rec, FLOPS, 32, [16, 32], [0.5], "margin", idx=np.arange(100))
    assert isinstance(ev, CascadeEval) and list(ev.to_dict()) == EVAL_KEYS and ev.n == 100
    rnd = random_resolution(rec, FLOPS, 32, seed=1)
    assert isinstance(rnd, RandomResult) and list(rnd.to_dict()) == RANDOM_KEYS
    orc = oracle(rec, FLOPS, 32)
    assert isinstance(orc, OracleResult) and list(orc.to_dict()) == ORACLE_KEYS
    assert orc.uses_labels is True and orc["note"].startswith("bound, not a policy")
    for r in (sel, cas, ev, rnd, orc):
        assert list(r.keys()) == list(r.to_dict())
        json.dumps(r.to_dict(), allow_nan=True)  # plain values: no default= needed


def test_results_read_like_dicts_and_are_frozen():
    rec = records()
    sel = select_resolution(rec, FLOPS, 32, max_drop=3.0)
    assert sel["resolution"] == sel.resolution and sel["n_heldout"] == sel.n_heldout == 150
    assert "n" not in sel and "n_calib" in sel and sel.get("missing") is None
    assert sel["candidates"][0]["resolution"] == sel.candidates[0].resolution
    with pytest.raises(KeyError):
        sel["n"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sel.resolution = 16  # type: ignore[misc]
    assert sel == select_resolution(rec, FLOPS, 32, max_drop=3.0)
    assert sel != select_resolution(rec, FLOPS, 32, max_drop=0.0)
    d = sel.to_dict()
    d["acc_drop_ci"].append(0.0)  # a copy: the result is untouched
    assert len(sel.acc_drop_ci) == 2
    cas = search_cascade(rec, FLOPS, 32, max_drop=3.0, n_thresholds=10)
    assert cas["n_heldout"] == cas.n_heldout and "n" not in cas
    assert cas.n_calib + cas.n_heldout == 300


def test_the_reference_always_qualifies_and_bad_budgets_say_so():
    rec = records()
    cas = search_cascade(rec, FLOPS, 32, max_drop=0.0, n_thresholds=10)
    assert cas.calib_upper_bound <= 1e-9
    assert select_resolution(rec, FLOPS, 32, max_drop=0.0).calib_upper_bound <= 1e-9
    for bad in (-1.0, float("nan")):
        with pytest.raises(ReswiseError, match="max-drop"):
            search_cascade(rec, FLOPS, 32, max_drop=bad)
        with pytest.raises(ReswiseError, match="max-drop"):
            select_resolution(rec, FLOPS, 32, max_drop=bad)


def test_signals_eps_and_headroom_are_defined_once():
    import reswise.choose.policies as policies
    import reswise.choose.policies.cascade as cascade
    import reswise.choose.policies.select as select
    import reswise.choose.policies.split as split
    import reswise.records as rec_mod

    assert cascade.SIGNALS is rec_mod.SIGNALS
    assert cascade.EPS is split.EPS and select.EPS is split.EPS
    assert callable(policies.headroom)
    assert sys.modules["reswise.choose.policies.headroom"].headroom is policies.headroom


def test_compare_result_holds_every_choice():
    rec, bn, extra = records(seed=0), records(seed=1), records(seed=2)
    kw = {"max_drop": 3.0, "confidence": 0.9, "seed": 1}
    out = compare(rec, FLOPS, 32, **kw, records_bn=bn, max_len=2, extras={"ad": extra})
    assert isinstance(out, CompareResult)
    assert list(out.to_dict()) == ["selected", "cascade", "selected_bn", "cascade_bn", "bn_used",
                                   "ad_selected", "ad_cascade", *COMPARE_TAIL]  # fmt: skip
    assert out["selected"] == out.selected == select_resolution(rec, FLOPS, 32, **kw)
    assert out["ad_cascade"] == out.extra_cascade["ad"]
    assert out.extra_cascade["ad"] == search_cascade(extra, FLOPS, 32, **kw, max_len=2)
    assert out.to_dict()["selected"] == out.selected.to_dict()
    policies = [r["policy"] for r in out.rows]
    assert policies[-4:] == ["ad", "ad selected", "ad cascade", "ad oracle (uses labels)"]
    plain_ = compare(rec, FLOPS, 32, **kw)
    assert list(plain_.to_dict()) == ["selected", "cascade", *COMPARE_TAIL]
    assert plain_.selected_bn is None and plain_.bn_used is None
    json.dumps(out.to_dict())
