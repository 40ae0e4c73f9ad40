"""The shipped folder cannot disagree with itself (issue 31): a hand-edited policy file (source
or exported copy) is refused in one line naming the field, never run or printed as fact; the
export refuses flags it does not use and says when its check on real images did not run; the
module takes 16-bit float images. Real CIFAR-10 (JPEG copy) images and the multi-resolution
ResNet-20 throughout."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reswise.errors import ReswiseError

from .conftest import CIFAR_JPEG, needs_shared
from .test_adaptive import shipped
from .test_inputs import cascade, module
from .test_inputs import exported as small_export

pytestmark = needs_shared
pytest.importorskip("onnxruntime")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reswise", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)  # fmt: skip


def _one_line_refusal(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, p.stdout[-500:] + p.stderr[-1500:]
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


def _set(p: dict, keys: str, value: Any) -> None:
    *head, last = keys.split(".")
    for k in head:
        p = p[k]
    p[last] = value


def _rewrite(path: Path, edit: Callable[[dict], None], keep_seal: bool) -> Path:
    """``path`` edited by hand: ``edit`` applied, the file's seal kept or removed with it."""
    policy = json.loads(path.read_text())
    edit(policy)
    if not keep_seal:
        policy.pop("seal", None)
    path.write_text(json.dumps(policy, indent=1))
    return path


# ---- the exported copy, as the runtime (per-stage and fused) reads it -------------------------


def _drop_first_stage(p: dict) -> None:
    """The chain shortened consistently: every other field agrees, only the graphs do not."""
    p.update(chain=[32], thresholds=[], signal=None, bn={"32": "shared"}, kind="select")
    p["graphs"]["stages"] = p["graphs"]["stages"][1:]


SHIPPED_EDITS: list[tuple[str, Callable[[dict], None], str]] = [
    ("threshold", lambda p: _set(p, "thresholds", [0.99]), "thresholds"),
    ("signal", lambda p: _set(p, "signal", "max_softmax"), "signal"),
    ("chain", _drop_first_stage, "chain"),
    ("flops", lambda p: _set(p, "flops.24", p["flops"]["24"] // 2), "flops"),
    ("claimed top-1", lambda p: _set(p, "heldout.top1", 99.0), "heldout"),
    ("bn source", lambda p: _set(p, "bn.24", "shared"), "bn"),
    ("graphs swapped", lambda p: p["graphs"]["stages"].reverse(), "graphs.stages[0]"),
]  # fmt: skip


def _shipped_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "shipped"
    shutil.copytree(small_export(), copy)
    return copy


@pytest.mark.parametrize("fused", [False, True], ids=["per-stage", "fused"])
@pytest.mark.parametrize("keep_seal", [True, False], ids=["sealed", "seal removed"])
@pytest.mark.parametrize("edit,field", [(e, f) for _, e, f in SHIPPED_EDITS],
                         ids=[n for n, _, _ in SHIPPED_EDITS])  # fmt: skip
def test_runtime_refuses_an_edited_export_naming_the_field(tmp_path, edit, field, keep_seal, fused):
    # a threshold edited 0.46 -> 0.99 in shipped/policy.json: the per-stage runner escalated
    # every image, the fused graph (its thresholds baked in) 23.5 %, and neither said a word
    from reswise.ship.runtime import OnnxCascade

    copy = _shipped_copy(tmp_path)
    OnnxCascade(copy, fused=fused)  # the folder as exported loads
    _rewrite(copy / "policy.json", edit, keep_seal)
    with pytest.raises(ReswiseError) as e:
        OnnxCascade(copy, fused=fused).sessions  # noqa: B018 (fused: stage graphs load on use)
    msg = str(e.value)
    assert field in msg and "\n" not in msg and "export" in msg, msg


def test_an_export_without_its_seal_but_unedited_still_runs(tmp_path):
    from reswise.ship.runtime import OnnxCascade

    copy = _shipped_copy(tmp_path)
    _rewrite(copy / "policy.json", lambda p: None, keep_seal=False)
    x = cascade()[1][:8].numpy()
    want = OnnxCascade(small_export())(x)
    for fused in (False, True):
        logits, res = OnnxCascade(copy, fused=fused)(x)
        assert np.array_equal(res, want[1]) and np.abs(logits - want[0]).max() < 1e-5


def test_the_fused_graph_holds_the_policys_thresholds_and_the_stages_their_resolutions():
    import onnx
    from onnx import numpy_helper

    out = small_export()
    policy = json.loads((out / "policy.json").read_text())
    fused = onnx.load(str(out / "cascade.onnx"))
    baked = {i.name: numpy_helper.to_array(i) for i in fused.graph.initializer}
    assert [float(baked[f"fuse/t{k}"]) for k in range(len(policy["thresholds"]))] == [
        float(np.float32(t)) for t in policy["thresholds"]
    ]
    for g, r in zip(policy["graphs"]["stages"], policy["chain"]):
        meta = {m.key: m.value for m in onnx.load(str(out / g["file"])).metadata_props}
        assert json.loads(meta["reswise.stage"]) == {"resolution": r, "precision": "fp32"}


# ---- the source policy file, as export, latency and the module read it -----------------------


def _policy_copy(tmp_path: Path, edit: Callable[[dict], None], keep_seal: bool = True) -> Path:
    _, path, _, _ = shipped()
    dst = tmp_path / "pol" / "policy.json"
    dst.parent.mkdir()
    shutil.copy(path, dst)
    return _rewrite(dst, edit, keep_seal)


def _latency(policy: Path) -> subprocess.CompletedProcess:
    return _cli("latency", "--policy", str(policy), "--data-root", str(CIFAR_JPEG / "test"),
                "--limit", "64", "--batch-size", "32", "--backend", "onnxruntime")  # fmt: skip


def _halve_flops(p: dict) -> None:
    p["flops"]["20"] //= 2


@pytest.mark.parametrize("keep_seal", [True, False], ids=["sealed", "seal removed"])
def test_latency_refuses_edited_flops_instead_of_printing_them(tmp_path, keep_seal):
    # the edited file printed "FLOPs saved 82.6 %" (true: 57.6 %), exit 0
    p = _latency(_policy_copy(tmp_path, _halve_flops, keep_seal))
    _one_line_refusal(p, 'flops["20"]' if not keep_seal else "flops")
    assert "FLOPs saved" not in p.stdout


@pytest.mark.parametrize("command", ["export", "latency"])
def test_an_edited_threshold_in_the_source_is_refused(tmp_path, command):
    bad = _policy_copy(tmp_path, lambda p: _set(p, "thresholds", [0.99, p["thresholds"][1]]))
    if command == "export":
        p = _cli("export", "--policy", str(bad), "--out", str(tmp_path / "out"))
    else:
        p = _latency(bad)
    _one_line_refusal(p, "thresholds", str(bad))
    assert not (tmp_path / "out").exists()


def test_the_module_refuses_an_edited_source_too(tmp_path):
    from reswise.ship.adaptive import AdaptiveClassifier

    bad = _policy_copy(tmp_path, lambda p: _set(p, "signal", "entropy"))
    with pytest.raises(ReswiseError, match="signal") as e:
        AdaptiveClassifier(bad, shipped()[3])
    assert "\n" not in str(e.value)


# ---- precision: an int8 policy edited to fp32, or its precision removed -----------------------


@functools.lru_cache(maxsize=1)
def int8_policy() -> Path:
    """A cascade [20/int8, 32] from a real 200-image fp32+int8 sweep, as `cascade --save`
    writes it (beside it: its .quant.json)."""
    import tempfile

    from .test_precision import _folder, _int8_policy, _sweep

    root = Path(tempfile.mkdtemp(prefix="reswise_int8_"))
    run = _sweep(_folder(root / "data"), root / "run", quant="minmax", res="32,20")
    _int8_policy(run, root / "p.json")
    return root / "p.json"


def _int8_copy(tmp_path: Path) -> Path:
    src = int8_policy()
    for f in src.parent.glob("p.*"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "p.json"


def _to_fp32(p: dict) -> None:
    p["precision"] = ["fp32"] * len(p["chain"])


def _no_precision(p: dict) -> None:
    del p["precision"]


def _all_int8(p: dict) -> None:
    p["precision"] = ["int8"] * len(p["chain"])


@pytest.mark.parametrize("keep_seal", [True, False], ids=["sealed", "seal removed"])
@pytest.mark.parametrize("edit", [_to_fp32, _no_precision, _all_int8],
                         ids=["int8 -> fp32", "removed", "fp32 -> int8"])  # fmt: skip
def test_export_refuses_an_int8_policy_whose_precision_was_edited(tmp_path, edit, keep_seal):
    # exported with exit 0, and the shipped file still claimed the int8 held-out figure and kept
    # the quantization entry
    bad = _rewrite(_int8_copy(tmp_path), edit, keep_seal)
    p = _cli("export", "--policy", str(bad), "--out", str(tmp_path / "out"))
    _one_line_refusal(p, "precision", str(bad))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep_seal", [True, False], ids=["sealed", "seal removed"])
def test_runtime_refuses_an_int8_export_edited_to_fp32(tmp_path, keep_seal):
    from reswise.ship.export import export_policy
    from reswise.ship.runtime import OnnxCascade

    out = tmp_path / "shipped"
    export_policy(_int8_copy(tmp_path), out)
    OnnxCascade(out)
    _rewrite(out / "policy.json", _to_fp32, keep_seal)
    with pytest.raises(ReswiseError, match="precision") as e:
        OnnxCascade(out)
    assert "\n" not in str(e.value)


# ---- export --policy: unused flags, and a check on real images that could not run -------------


@pytest.mark.parametrize(
    "flag",
    [["--bake-resize-from", "64"], ["--model", "cifar_resnet20"], ["--resolution", "24"],
     ["--checkpoint", "w.pt"], ["--pretrained"], ["--random-init"]],
    ids=lambda f: f[0],
)  # fmt: skip
def test_export_policy_refuses_flags_it_does_not_use(tmp_path, capsys, flag):
    from reswise.cli.main import main

    _, path, _, _ = shipped()
    out = tmp_path / "out"
    assert main(["export", "--policy", str(path), "--out", str(out), *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag[0] in err and "--policy" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "flag", [["--model", "cifar_resnet20"], ["--resolutions", "24,32"], ["--reference", "32"],
             ["--no-fast"]], ids=lambda f: f[0],
)  # fmt: skip
def test_latency_policy_refuses_flags_it_does_not_use(capsys, flag):
    from reswise.cli.main import main

    _, path, _, _ = shipped()
    argv = ["latency", "--policy", str(path), "--data-root", str(CIFAR_JPEG / "test"),
            "--limit", "32", "--batch-size", "32", "--backend", "onnxruntime", *flag]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag[0] in err and "--policy" in err, err


def test_export_check_of_one_resolution_needs_real_images(tmp_path, capsys):
    from reswise.cli.main import main

    out = tmp_path / "r20.onnx"
    argv = ["export", "--model", "cifar_resnet20", "--resolution", "24", "--out", str(out)]
    assert main([*argv, "--check"]) == 2  # without --check-root: random noise, not real images
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--check-root" in err and not out.exists(), err
    assert main([*argv, "--check", "--check-root", str(CIFAR_JPEG / "test"), "--check-size",
                 "16"]) == 0  # fmt: skip


def _relative_images(tmp_path: Path) -> Path:
    """The policy of a sweep run as `--data-root test` from inside the data set's folder."""
    return _policy_copy(tmp_path, lambda p: _set(p, "images.dataset", "test"))


def test_export_says_when_its_check_on_real_images_did_not_run(tmp_path):
    # run from another folder than the sweep's: exit 0, "wrote ...", and nothing said that no
    # image was checked (the policy's relative image path was not found)
    policy = _relative_images(tmp_path)
    p = _cli("export", "--policy", str(policy), "--out", str(tmp_path / "out"), "--json",
             cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert "n_check_images" not in result and "test" in result["check_skipped"]
    assert "--check-root" in result["check_skipped"]
    p = _cli("export", "--policy", str(policy), "--out", str(tmp_path / "out2"), cwd=tmp_path)
    assert "not checked on real images" in p.stdout + p.stderr
    # --check: a check that cannot run is a failure, and nothing is written
    p = _cli("export", "--policy", str(policy), "--out", str(tmp_path / "out3"), "--check",
             cwd=tmp_path)  # fmt: skip
    _one_line_refusal(p, "--check-root")
    assert not (tmp_path / "out3").exists()


def test_export_check_runs_from_the_sweeps_folder_and_passes_check(tmp_path):
    policy = _relative_images(tmp_path)
    p = _cli("export", "--policy", str(policy), "--out", str(tmp_path / "out"), "--check",
             "--check-size", "64", "--json", cwd=CIFAR_JPEG)  # fmt: skip
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["n_check_images"] == 64 and "check_skipped" not in result


# ---- AdaptiveClassifier and 16-bit floats ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_takes_16_bit_float_images(dtype):
    # a raw torch error ("compute_index_ranges_weights" not implemented for 'Half')
    images = cascade()[1][:32]
    x = (images.float() / 255).to(dtype)
    got = module()(x)
    want = module()(x.float())  # the same values, in float32
    assert torch.equal(got.resolution, want.resolution)
    assert torch.equal(got.logits, want.logits) and got.logits.dtype == torch.float32


def test_latency_times_the_shipped_copy_of_a_multi_stage_policy():
    """`latency --policy SHIPPED/policy.json` of any cascade of two stages or more was refused
    ("graphs.stages has 3 graphs for 1 stages": the one-stage baseline kept the shipped graph
    list) wherever torch timed it (the default backends, --backend eager), though the file was
    whole (sixth round as a new user)."""
    from reswise.ship.export import export_policy

    _, path, _, lm = shipped()  # a real sweep's three-stage cascade
    out = path.parent / "shipped_for_latency"
    export_policy(path, out, lm=lm)
    p = _cli("latency", "--policy", str(out / "policy.json"), "--data-root",
             str(CIFAR_JPEG / "test"), "--limit", "64", "--batch-size", "32", "--repeats", "1",
             "--backend", "eager")  # fmt: skip
    assert p.returncode == 0, p.stderr[-800:]
    assert "adaptive" in p.stdout and "graphs.stages" not in p.stderr
