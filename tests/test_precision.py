"""sweep --precision: int8 stages on real CIFAR-10 (JPEG copy) images with the multi-resolution
ResNet-20, calibrated on the calibration half only, shipped and run by the runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import reswise
from reswise.choose.policies import calib_heldout_split, evaluate_cascade
from reswise.data import load_data
from reswise.errors import ReswiseError
from reswise.models import load_model
from reswise.pipeline import SweepConfig, run_sweep

from .conftest import CIFAR_JPEG, needs_shared

pytestmark = needs_shared
PER_CLASS = 20  # 200 images: 100 calibrate and choose, 100 held out
WEIGHTS = "reswise_jpeg_multires_v2"


def _folder(root: Path, swap: set[int] = frozenset(), noise: set[int] = frozenset()) -> Path:
    """A CIFAR-10 (JPEG copy) test subset as an ImageFolder (class folders in sorted order, files
    000..019): positions in ``swap`` hold another image of the same class, in ``noise`` random
    pixels."""
    classes = sorted(p.name for p in (CIFAR_JPEG / "test").iterdir())
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        files = sorted((CIFAR_JPEG / "test" / name).iterdir())
        for i in range(PER_CLASS):
            pos, dst = c * PER_CLASS + i, root / name / f"{i:03d}.jpg"
            if pos in noise:
                rng = np.random.default_rng(pos)
                from PIL import Image

                Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(dst)
            else:
                shutil.copyfile(files[i + (500 if pos in swap else 0)], dst)
    return root


def _sweep(data: Path, out: Path, quant: str = "minmax", res: str = "32,20") -> reswise.SweepResult:
    cfg = SweepConfig(
        model="cifar_resnet20",
        pretrained=WEIGHTS,
        dataset="imagefolder",
        data_root=str(data),
        resolutions=res,
        precision="fp32,int8",
        quant=quant,
        out=str(out),
        threads=1,
    )
    return run_sweep(cfg)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> reswise.SweepResult:
    root = tmp_path_factory.mktemp("prec")
    return _sweep(_folder(root / "data"), root / "run", quant="auto")


def test_int8_rows_are_what_the_int8_graph_predicts(run: reswise.SweepResult):
    rec = run.records
    assert rec.keys == [32, 20, (32, "int8"), (20, "int8")]
    rows = {(r["resolution"], r["precision"]): r for r in run.rows}
    assert rows[(20, "int8")]["flops"] == rows[(20, "fp32")]["flops"]  # time, not FLOPs
    assert all(r["ort_ms_b64"] > 0 and r["ort_ms_b1"] > 0 for r in run.rows)
    assert run.meta["quant"]["calib_split"] == {"calib_frac": 0.5, "seed": 0, "n": 200}
    stage = run.meta["quant"]["stages"]["20"]
    assert len(stage["tried"]) == 6 and stage["agreement"] == max(stage["tried"].values())
    # the int8 graph rebuilt from what the run kept, run independently on the same images
    from reswise.measure.backends import ort_session
    from reswise.ship.adaptive import _quant_kept, int8_stages

    lm = load_model("cifar_resnet20", pretrained=WEIGHTS)
    policy = {"chain": [20], "precision": ["int8"], "quant_file": {"name": "q.json"}}
    kept = {20: _quant_kept(run, 20)}
    from unittest import mock

    with mock.patch("reswise.ship.adaptive.load_quant", return_value=kept):
        graph = int8_stages(policy, lm, {20: lm.extra.get(20)})[20]
    data = load_data(
        SweepConfig(
            "cifar_resnet20", "imagefolder", "32", str(Path(run.directory).parent / "data")
        ),
        lm,
    )
    pixels = lm.info.eval_policy()(data.get(torch.arange(len(data))), 20).float().numpy()
    logits = ort_session(graph, 1).run(None, {"pixels": pixels})[0]
    assert np.array_equal(logits.argmax(1), rec.topk_idx[rec.row((20, "int8")), :, 0])
    # and the agreement with fp32 the records show is that graph's
    agree = np.mean(logits.argmax(1) == rec.topk_idx[rec.row(20), :, 0])
    records_agree = np.mean(
        rec.topk_idx[rec.row((20, "int8")), :, 0] == rec.topk_idx[rec.row(20), :, 0]
    )
    assert agree == records_agree and agree > 0.9


def test_calibration_never_reads_heldout_images(tmp_path: Path):
    _, held = calib_heldout_split(PER_CLASS * 10, 0.5, 0)
    calib, _ = calib_heldout_split(PER_CLASS * 10, 0.5, 0)
    a = _sweep(_folder(tmp_path / "a"), tmp_path / "ra", res="20")
    b = _sweep(_folder(tmp_path / "b", swap=set(held.tolist())), tmp_path / "rb", res="20")
    c = _sweep(_folder(tmp_path / "c", noise={int(calib[0])}), tmp_path / "rc", res="20")

    def sha(r: reswise.SweepResult) -> str:
        return r.meta["quant"]["stages"]["20"]["graph_sha256"]

    assert a.meta["images_fingerprint"] != b.meta["images_fingerprint"]  # other held-out images
    assert sha(a) == sha(b)  # ... and the same int8 graph, bit for bit
    assert sha(a) != sha(c)  # a calibration image does reach it


def _int8_policy(run: reswise.SweepResult, path: Path) -> None:
    """A cascade [20/int8, 32] saved from the run, as `cascade --save` writes one."""
    from reswise.choose.choices import Budget
    from reswise.ship.adaptive import save_choice

    found = evaluate_cascade(
        run.records, run.flops, run.reference, [(20, "int8"), 32], [0.9], "max_softmax"
    ).to_dict()
    found.update(n_calib=100, n_heldout=100)
    save_choice(run, found, Budget(1.0), path)


def test_an_int8_policy_round_trips_export_and_runtime(run: reswise.SweepResult, tmp_path: Path):
    from reswise.ship.export import export_policy
    from reswise.ship.policy_file import load_policy, simulate
    from reswise.ship.runtime import OnnxCascade

    _int8_policy(run, tmp_path / "p.json")
    policy = load_policy(tmp_path / "p.json")
    assert (
        policy["precision"] == ["int8", "fp32"] and policy["quant_file"]["name"] == "p.quant.json"
    )
    data = load_data(
        SweepConfig(
            "cifar_resnet20", "imagefolder", "32", str(Path(run.directory).parent / "data")
        ),
        load_model("cifar_resnet20", pretrained=WEIGHTS),
    )
    images = data.get(torch.arange(len(data)))
    out = export_policy(tmp_path / "p.json", tmp_path / "shipped", check_images=images)
    assert out["max_abs_logit_diff_same_stage"] < 1e-4
    logits, res = OnnxCascade(tmp_path / "shipped")(images.numpy())
    want, want_res = simulate(policy, run.records)
    assert np.mean(logits.argmax(1) == want) >= 0.99 and np.mean(res == want_res) >= 0.99
    # the int8 stage inside the fused graph: the same answers as the stage's own session
    assert out["fused"]["max_abs_logit_diff_same_stage"] < 1e-4
    fused_logits, fused_res = OnnxCascade(tmp_path / "shipped", fused=True)(images.numpy())
    assert np.array_equal(fused_res, res) and np.abs(fused_logits - logits).max() < 1e-5
    # a changed quantization file is refused, not used
    q = tmp_path / "p.quant.json"
    q.write_text(q.read_text().replace('"minmax"', '"entropy"', 1))
    with pytest.raises(ReswiseError, match="quantization parameters .* changed"):
        export_policy(tmp_path / "p.json", tmp_path / "again")


def test_bad_precisions_are_refused_before_any_work(tmp_path: Path):
    cfg = SweepConfig("cifar_resnet20", "imagefolder", "32", str(tmp_path), precision="fp32,int4")
    with pytest.raises(ReswiseError, match="unknown precision 'int4'"):
        run_sweep(cfg)
    from reswise.measure.doctor import bf16_support

    if bf16_support("cpu"):  # this CPU has no bf16 arithmetic: refused with the reason
        cfg = SweepConfig("cifar_resnet20", "imagefolder", "32", str(CIFAR_JPEG / "test"),
                          precision="bf16", limit=8, out=str(tmp_path / "o"))  # fmt: skip
        with pytest.raises(ReswiseError, match="bf16 is refused here: this CPU"):
            run_sweep(cfg)
    else:  # native bf16: the stages are swept in torch, answer like fp32, and are not timed
        cfg = SweepConfig("cifar_resnet20", "imagefolder", "32,24", str(CIFAR_JPEG / "test"),
                          precision="fp32,bf16", limit=200, out=str(tmp_path / "o"))  # fmt: skip
        run = run_sweep(cfg)
        rows = {(r["resolution"], r["precision"]): r for r in run.rows}
        assert set(rows) == {(32, "fp32"), (24, "fp32"), (32, "bf16"), (24, "bf16")}
        for r in (32, 24):
            fp32, bf16 = rows[(r, "fp32")], rows[(r, "bf16")]
            assert abs(fp32["top1"] - bf16["top1"]) <= 2.0 and "ort_ms_b64" not in bf16
            assert bf16["flops"] == fp32["flops"]
    with pytest.raises(ReswiseError, match="quant"):
        run_sweep(SweepConfig("cifar_resnet20", "imagefolder", "32", str(tmp_path),
                              precision="int8", quant="kl"))  # fmt: skip


def test_time_objective_needs_measured_times(run: reswise.SweepResult):
    cost = run.cost("time")
    assert cost[(20, "int8")] < cost[20] < cost[32]  # measured, on this machine
    plain = reswise.SweepResult(**{**run.__dict__, "rows": [
        {k: v for k, v in r.items() if not k.startswith("ort_ms")} for r in run.rows]})  # fmt: skip
    with pytest.raises(ReswiseError, match="no measured time"):
        plain.cost("time")


def test_policy_files_refuse_inconsistent_precisions(run: reswise.SweepResult, tmp_path: Path):
    from reswise.ship.policy_file import check_policy, load_policy

    _int8_policy(run, tmp_path / "p.json")
    good = load_policy(tmp_path / "p.json")
    bad = {
        "precision has 1 entries for 2 stages": {"precision": ["int8"]},
        "quant_file is missing or null": {"quant_file": None},
        r'bn\["20"\] is recalibrated': {"bn": {"20": "recalibrated", "32": "shared"},
                                         "bn_file": {"name": "p.bn.npz", "sha256": "0" * 64}},
        r"precision\[1\] is \"bf16\"": {"precision": ["int8", "bf16"]},
    }  # fmt: skip
    for message, change in bad.items():
        with pytest.raises(ReswiseError, match=message):
            check_policy({**good, **change}, "p.json")
    # a file without precisions reads as fp32: no quantization file needed
    plain = {k: v for k, v in good.items() if k not in ("precision", "quant_file")}
    assert check_policy(plain, "p.json")["chain"] == [20, 32]
