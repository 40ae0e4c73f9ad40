"""Choosing over (resolution, precision) stages and by measured time (issue 23).

Synthetic records with known outcomes check the rules; a real sweep (with a fake int8 copy of
its passes stacked on) checks the API and the CLI end to end.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import reswise
from reswise import ReswiseError
from reswise.choose.choices import (
    Budget,
    cascade,
    cascade_headroom,
    choosing_records,
    compare_policies,
    select,
    with_precisions,
)
from reswise.choose.compare import best_of, compare
from reswise.choose.frontier import pareto_front
from reswise.choose.policies import (
    calib_heldout_split,
    evaluate_cascade,
    headroom,
    oracle,
    random_resolution,
    search_cascade,
    select_resolution,
)
from reswise.cli import main
from reswise.records import BNPass, Records, SweepResult, stage_order, summarize

C = 10
FLOPS = {32: 1000, 24: 560}
I8 = "int8"
# ms per image: int8 halves each pass; 32 at int8 is cheaper than 24 at fp32
TIMES = {32: 1.0, 24: 0.6, (32, I8): 0.4, (24, I8): 0.25}
CPU = {"name": "Test CPU 9000", "flags": ["avx2"]}
DATA = Path("/work/shared/datasets/cifar10-jpeg/test")


def make(spec: dict, precision: bool = True) -> Records:
    """Records right exactly where ``spec[key][0]`` says, with top-1 probability spec[key][1]."""
    keys = list(spec)
    n = len(spec[keys[0]][0])
    labels = np.arange(n) % C
    other = (labels + 1) % C
    idx = np.zeros((len(keys), n, 2), np.int32)
    prob = np.zeros((len(keys), n, 2), np.float32)
    for i, k in enumerate(keys):
        ok, p = np.asarray(spec[k][0], bool), np.asarray(spec[k][1], np.float32)
        idx[i, :, 0], idx[i, :, 1] = np.where(ok, labels, other), np.where(ok, other, labels)
        prob[i, :, 0], prob[i, :, 1] = p, (1 - p) / 2
    res = [k[0] if isinstance(k, tuple) else k for k in keys]
    prec = [k[1] if isinstance(k, tuple) else "fp32" for k in keys] if precision else None
    ent = 1 - prob[:, :, 0]
    return Records(res, np.arange(n, dtype=np.int64), labels.astype(np.int64), idx, prob, ent,
                   None, prec)  # fmt: skip


def easy_hard(n: int = 2000, seed: int = 0) -> dict:
    """32 right everywhere; 24 right on the confident 85 % and wrong on the rest; each int8
    stage is its fp32 stage exactly (same answers, same confidence)."""
    rng = np.random.default_rng(seed)
    ease = rng.random(n)
    conf = 0.2 + 0.7 * ease
    spec = {32: (np.ones(n, bool), np.full(n, 0.95)), 24: (ease > 0.15, conf)}
    spec[(32, I8)], spec[(24, I8)] = spec[32], spec[24]
    return spec


def strip(d: dict) -> dict:
    """A result's dict without the keys precisions add."""
    d = {k: v for k, v in d.items() if k != "precision"}
    if "candidates" in d:
        d["candidates"] = [strip(c) for c in d["candidates"]]
    return d


# --- fp32-only runs: the same results as before ---------------------------------------------


def test_fp32_records_with_and_without_a_precision_list_choose_the_same():
    spec = {k: v for k, v in easy_hard().items() if not isinstance(k, tuple)}
    old, new = make(spec, precision=False), make(spec)
    for f in (select_resolution, search_cascade):
        a = f(old, FLOPS, 32, max_drop=1.0).to_dict()
        b = f(new, FLOPS, 32, max_drop=1.0).to_dict()
        assert "precision" not in a and "objective" not in a and "time_saved_pct" not in a
        assert "precision" in b and strip(b) == a
    assert oracle(old, FLOPS, 32).to_dict() == strip(oracle(new, FLOPS, 32).to_dict())


# --- select and cascade over stages ----------------------------------------------------------


def test_select_picks_int8_by_time_and_fp32_by_flops():
    rec = make(easy_hard())
    by_flops = select_resolution(rec, FLOPS, 32, max_drop=1.0, times=TIMES)
    # int8 at 32 costs the FLOPs of 32: the tie goes to fp32; time is reported beside
    assert (by_flops.resolution, by_flops.precision, by_flops.objective) == (32, "fp32", "flops")
    assert by_flops.time_saved_pct == 0.0 and by_flops.flops_drop_pct == 0.0
    by_time = select_resolution(rec, FLOPS, 32, max_drop=1.0, objective="time", times=TIMES)
    assert (by_time.resolution, by_time.precision, by_time.objective) == (32, I8, "time")
    assert by_time.time_saved_pct == pytest.approx(60.0) and by_time.ms_per_image == 0.4
    assert by_time.flops_drop_pct == 0.0 and by_time.acc_drop_pct == 0.0
    cands = {(c.resolution, c.precision): c for c in by_time.candidates}
    assert set(cands) == {(32, "fp32"), (24, "fp32"), (32, I8), (24, I8)}
    assert cands[(24, I8)].time_saved_pct == pytest.approx(75.0)
    assert not cands[(24, I8)].qualifies  # 15 % wrong at 24


def test_cascade_by_time_climbs_in_stage_order_and_names_precisions():
    rec = make(easy_hard())
    kw = {"max_drop": 1.0, "n_thresholds": 20, "max_len": 2, "times": TIMES}
    flops = search_cascade(rec, FLOPS, 32, **kw)
    assert flops.chain == [24, 32] and flops.precision == ["fp32", "fp32"]
    timed = search_cascade(rec, FLOPS, 32, **kw, objective="time")
    assert timed.chain == [24, 32] and timed.precision == [I8, I8]
    assert timed.objective == "time" and flops.objective == "flops"
    # FLOPs saved do not depend on the precision; the time saved is what the shares imply
    assert timed.flops_drop_pct == pytest.approx(flops.flops_drop_pct)
    a = timed.stage_share_pct[0] / 100
    ms = 0.25 + (1 - a) * 0.4
    assert timed.mean_ms_per_image == pytest.approx(ms)
    assert timed.time_saved_pct == pytest.approx(100 * (1 - ms / 1.0))
    assert timed.calib_time_saved_pct > timed.calib_flops_drop_pct > 0
    assert timed.time_saved_pct > flops.time_saved_pct > 0


def test_cascade_chains_are_stage_keys_in_stage_order():
    rec = make(easy_hard(400))
    for chain in ([(24, I8), 24, 32], [(24, I8), (32, I8)], ["24/int8", "32"], [[24, I8], 32]):
        ev = evaluate_cascade(rec, FLOPS, 32, chain, [0.5] * (len(chain) - 1), "margin")
        keys = [k if p == "fp32" else (k, p) for k, p in zip(ev.chain, ev.precision)]
        assert [stage_order(k) for k in keys] == sorted(stage_order(k) for k in keys)
        assert len(ev.precision) == len(ev.chain)
    for bad in ([32, (32, I8)], [24, (24, I8)], [(24, I8), (24, I8)]):
        with pytest.raises(ReswiseError, match="strictly ascending"):
            evaluate_cascade(rec, FLOPS, 32, bad, [0.5], "margin")
    with pytest.raises(ReswiseError, match="16/int8 is not in the records"):
        evaluate_cascade(rec, FLOPS, 32, ["16/int8", 32], [0.5], "margin")


def test_objective_time_needs_times_and_a_known_objective():
    rec = make(easy_hard(400))
    for f in (select_resolution, search_cascade):
        with pytest.raises(ReswiseError, match="--objective flops"):
            f(rec, FLOPS, 32, max_drop=1.0, objective="time")
        with pytest.raises(ReswiseError, match="unknown objective"):
            f(rec, FLOPS, 32, max_drop=1.0, objective="watts", times=TIMES)
    with pytest.raises(ReswiseError, match="no measured time for stage 24/int8"):
        select_resolution(rec, FLOPS, 32, max_drop=1.0, times={32: 1.0, 24: 0.5, (32, I8): 1})


def test_headroom_oracle_and_random_work_over_stages():
    rec = make(easy_hard())
    rows = headroom(rec, FLOPS, 32, times=TIMES)
    # cheaper than the reference in FLOPs: 24 at either precision, not 32 at int8
    assert [(r["resolution"], r["precision"]) for r in rows] == [(24, "fp32"), (24, I8)]
    rows = headroom(rec, FLOPS, 32, objective="time", times=TIMES)
    assert [(r["resolution"], r["precision"]) for r in rows] == [(24, I8), (32, I8), (24, "fp32")]
    at32 = rows[1]
    assert at32["stage_cost_pct"] == pytest.approx(40.0)
    assert at32["perfect"] == {"accept_pct": 100.0, "time_saved_pct": pytest.approx(60.0)}
    orc = oracle(rec, FLOPS, 32, objective="time", times=TIMES)
    assert orc.precision[0] == I8 and orc.resolutions[0] == 24 and orc.objective == "time"
    assert orc.time_saved_pct == pytest.approx(100 * (1 - (0.85 * 0.25 + 0.15 * 0.4)), abs=2)
    rnd = random_resolution(rec, FLOPS, 32, seed=0, choices=[32, "32/int8"], times=TIMES)
    assert rnd.choices == [32, 32] and rnd.precision == ["fp32", I8]
    assert rnd.flops_drop_pct == 0.0 and 20 < rnd.time_saved_pct < 40


# --- compare, BN pass, frontier --------------------------------------------------------------


def test_compare_rows_name_stages_and_bn_rows_stay_fp32():
    spec = easy_hard(600)
    rec = make(spec)
    bn = make({k: v for k, v in spec.items() if not isinstance(k, tuple)}, precision=False)
    calib, _ = calib_heldout_split(600, 0.5, 0)
    merged, used = best_of(rec, bn, calib, 32)
    assert merged.keys == rec.keys and used[(24, I8)] is False and (32, I8) in used
    out = compare(rec, FLOPS, 32, max_drop=5.0, records_bn=bn, times=TIMES, timed_on=CPU)
    d = out.to_dict()
    json.dumps(d)
    assert d["bn_used"].keys() == {32, 24, "32/int8", "24/int8"}
    assert d["objective"] == "flops" and d["timed_on"] == CPU
    fixed = [r for r in d["rows"] if r["policy"] == "fixed"]
    assert [r["detail"] for r in fixed] == ["32x32", "24x24", "32x32/int8", "24x24/int8"]
    assert [r["precision"] for r in fixed] == ["fp32", "fp32", I8, I8]
    assert fixed[2]["time_saved_pct"] == pytest.approx(60.0)
    recal = [r["detail"] for r in d["rows"] if r["policy"] == "recalibrated"]
    assert recal == ["32x32 + BN recal", "24x24 + BN recal"]
    assert "uniform over [32, 24, 32/int8, 24/int8]" in [r["detail"] for r in d["rows"]]


def run_of(records: Records, times: dict | None = TIMES, **meta) -> SweepResult:
    flops = [{"resolution": r, "macs": f // 2, "flops": f, "params": 7,
              "flops_drop_pct": 100 * (1 - f / FLOPS[32])} for r, f in FLOPS.items()]  # fmt: skip
    rows = summarize(records, 32, flops)
    for row, k in zip(rows, records.keys):
        if times:
            row["ort_ms_b64"] = 64 * times[k]
    meta = {"images_fingerprint": "same", "cpu": CPU, **meta}
    return SweepResult("m", "m.w", "data", 32, "whole image", "bilinear", rows, records, meta=meta)


def test_choosing_records_keep_int8_rows_from_the_plain_pass():
    spec = easy_hard(600)
    run = run_of(make(spec))
    fp32 = make({k: v for k, v in spec.items() if not isinstance(k, tuple)}, precision=False)
    run.bn = BNPass(fp32, run.rows[:2], "calib", 10)
    rec = choosing_records(run)
    assert rec.keys == run.records.keys
    assert np.array_equal(rec.topk_idx[2], run.records.topk_idx[2])
    sel = select(run, max_drop=5.0, objective="time")
    assert sel.precision == I8 and sel.timed_on == CPU
    restricted = run.restrict([32], None)
    assert restricted.records.keys == [32, (32, I8)] and restricted.bn.records.keys == [32]


def test_int8_calibrated_on_another_split_is_refused():
    quant = {"calib_split": {"calib_frac": 0.5, "seed": 0, "n": 600}}
    run = run_of(make(easy_hard(600)), quant=quant)
    for f in (select, cascade, cascade_headroom, compare_policies):
        with pytest.raises(ReswiseError, match="--calib-frac 0.5 --seed 0") as e:
            f(run, Budget(seed=1))
        assert "\n" not in str(e.value) and "int8" in str(e.value)
    select(run, Budget(seed=0))
    fp32 = with_precisions(run, ["fp32"])  # no int8 stage left: nothing was calibrated on it
    assert fp32.records.keys == [32, 24] and [r["precision"] for r in fp32.rows] == ["fp32"] * 2
    select(fp32, Budget(seed=1))
    assert with_precisions(run, [I8]).records.keys == [32, (32, I8), (24, I8)]
    with pytest.raises(ReswiseError, match="precision bf16 is not in the run"):
        with_precisions(run, ["bf16"])


def test_frontier_has_a_point_per_stage_and_compares_times_on_one_cpu():
    run = run_of(make(easy_hard(600)))
    f = pareto_front([run], objective="time", budget_ms=0.5)
    labels = [p.label for p in f.points]
    assert labels[:2] == ["m @ 24/int8", "m @ 32/int8"] and f.front[-1].label == "m @ 32/int8"
    d = f.to_dict()
    assert d["objective"] == "time" and d["timed_on"] == CPU
    assert d["points"][0]["precision"] == I8 and d["points"][0]["ms_per_image"] == 0.25
    assert d["budget"]["best"]["precision"] == I8 and "ms/image" in f.table()
    flops = pareto_front([run])
    assert [p.flops for p in flops.points] == sorted(p.flops for p in flops.points)
    other = run_of(make(easy_hard(600)), cpu={"name": "elsewhere"})
    other.model = "m2"
    with pytest.raises(ReswiseError, match="different CPUs"):
        pareto_front([run, other], objective="time")
    with pytest.raises(ReswiseError, match="--objective flops"):
        pareto_front([run_of(make(easy_hard(600)), times=None)], objective="time")


# --- a real sweep, with a fake int8 copy ------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is not here")
    out = tmp_path_factory.mktemp("sweep")
    argv = ["sweep", "--model", "cifar_resnet20", "--dataset", "imagefolder", "--data-root",
            str(DATA), "--resolutions", "32,24,16", "--limit", "400", "--out", str(out),
            "--threads", "1", "--no-progress", "--json"]  # fmt: skip
    assert main(argv) == 0
    return out


def fake_int8(run: SweepResult, out: Path) -> SweepResult:
    """``run`` with int8 rows that answer exactly as fp32, half as fast; saved into ``out``."""
    rec = run.records
    q = Records(list(rec.resolutions), rec.indices, rec.labels, rec.topk_idx.copy(),
                rec.topk_prob.copy(), rec.entropy.copy(), None, [I8] * len(rec.resolutions))  # fmt: skip
    ms = {32: 0.1, 24: 0.06, 16: 0.03}
    rows = [{**r, "precision": "fp32", "ort_ms_b64": 64 * ms[r["resolution"]]} for r in run.rows]
    rows += [{**r, "precision": I8, "ort_ms_b64": 32 * ms[r["resolution"]]} for r in run.rows]
    quant = {"calib_split": {"calib_frac": 0.5, "seed": 0, "n": run.n}}
    meta = {**run.meta, "cpu": CPU, "quant": quant}
    new = dataclasses.replace(run, records=rec.stack(q), rows=rows, meta=meta)
    out.mkdir()
    new.save(out)
    return reswise.load_run(out)


def test_real_run_api_and_cli(real_run, tmp_path, capsys):
    plain = reswise.load_run(real_run)
    with pytest.raises(ReswiseError, match="--objective flops") as e:
        reswise.cascade(plain, max_drop=10.0, objective="time")
    assert "\n" not in str(e.value)
    assert "objective" not in reswise.cascade(plain, max_drop=10.0).to_dict()
    run = fake_int8(plain, tmp_path / "run")
    cas = reswise.cascade(run, max_drop=10.0, objective="time")
    d = cas.to_dict()
    assert d["objective"] == "time" and d["timed_on"] == CPU and d["precision"][-1] == I8
    assert len(d["precision"]) == len(d["chain"]) and d["time_saved_pct"] >= 50 - 1e-9
    sel = reswise.select(run, max_drop=10.0, objective="time")
    assert (sel.resolution, sel.precision) == (32, I8) and sel.time_saved_pct == pytest.approx(50)
    same = reswise.select(plain, max_drop=10.0)
    assert reswise.select(run, max_drop=10.0).acc_drop_pct == same.acc_drop_pct
    cmp_ = reswise.compare_policies(run, max_drop=10.0, objective="time", out=tmp_path / "run")
    assert cmp_.selected.precision == I8
    assert "Time Saved (%)" in (tmp_path / "run" / "compare.md").read_text()
    src = ["--from", str(tmp_path / "run"), "--max-drop", "10"]
    assert main(["cascade", *src, "--objective", "time", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == d["precision"]
    assert main(["select", *src, "--objective", "time"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("selected 32/int8 for cifar_resnet20") and "Test CPU 9000" in text
    assert main(["select", *src, "--objective", "time", "--precision", "fp32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "fp32" and {c["precision"] for c in out["candidates"]} == {"fp32"}
    assert main(["random", *src[:2], "--resolutions", "32,16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["choices"] == [32, 32, 16, 16] and out["precision"] == ["fp32", I8, "fp32", I8]
    assert out["timed_on"] == CPU and out["time_saved_pct"] > 0
    assert main(["select", "--from", str(real_run), "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "precision int8 is not in the run" in err


def test_bf16_stages_are_left_out_of_choices_by_time(real_run, tmp_path):
    # bf16 stages run in torch only (ONNX Runtime's CPU provider has no bf16 arithmetic), so a
    # sweep with --precision fp32,int8,bf16 has no time for them: every chooser by time
    # refused the whole run, telling the user to rerun the sweep with --precision
    run = fake_int8(reswise.load_run(real_run), tmp_path / "i8")
    rec = run.records
    n = len(rec.resolutions) // 2
    b = Records(rec.resolutions[:n], rec.indices, rec.labels, rec.topk_idx[:n].copy(),
                rec.topk_prob[:n].copy(), rec.entropy[:n].copy(), None, ["bf16"] * n)  # fmt: skip
    rows = run.rows + [
        {k: v for k, v in r.items() if not k.startswith("ort_ms")} | {"precision": "bf16"}
        for r in run.rows[:n]
    ]
    both = dataclasses.replace(run, records=rec.stack(b), rows=rows)
    (tmp_path / "b").mkdir()
    both.save(tmp_path / "b")
    both = reswise.load_run(tmp_path / "b")
    with pytest.raises(ReswiseError, match="bf16 .*not shipped.*--precision fp32,int8"):
        both.cost("time")
    for f in (reswise.select, reswise.cascade):
        got = f(both, max_drop=10.0, objective="time").to_dict()
        want = f(run, max_drop=10.0, objective="time").to_dict()
        assert got == want and "bf16" not in json.dumps(got)
    by_flops = reswise.select(both, max_drop=10.0)  # FLOPs: bf16 stages stay candidates
    assert "bf16" in {c.precision for c in by_flops.candidates}
    front = pareto_front([both], objective="time")
    assert {p.precision for p in front.points} == {"fp32", I8}
    assert main(["frontier", "--from", str(tmp_path / "b"), "--objective", "time"]) == 0
