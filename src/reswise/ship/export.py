"""Export a policy file's cascade: one ONNX graph per stage, resize from the native size inside.

    reswise export --policy policy.json --format onnx --out shipped/

Each graph takes the native-size uint8 batch ``N x 3 x S x S`` and does what the sweep did: the
resize, the normalisation, the network with the stage's BN. ONNX ``Resize`` has no mode equal to
torch's antialiased uint8 resize (the records' resize), so the graph does not use it: the resize
is separable and linear, so it is two ``MatMul``s by constant matrices holding torch's own
fixed-point weights (int16 with the kernel's precision), rounded after each pass exactly as
torch's kernel rounds (horizontal pass first, then vertical). :func:`resize_mismatch` measures it
against :class:`reswise.data.ResizePolicy` on the check images; pixel-identical is what the
export reports as ``resize_exact``. ``reswise.runtime`` runs the result without torch.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ResizePolicy
from ..errors import ReswiseError
from ..measure.onnx import TOLERANCE, prepare_model, quiet_export, require_onnxruntime
from ..models import LoadedModel
from ..records import confidence, sha256_file, write_atomic
from ..records.rundir import check_destination, hold
from .adaptive import AdaptiveClassifier, int8_stages, load_model_for, resize_policy, stage_bn
from .fused import fuse_cascade
from .policy_file import load_policy
from .seal import graph_metadata, seal_of, sealed_fields

MAX_PRECISION = 22  # torch's uint8 resize: weights scaled by 2**p, p < 22, fitting int16
NEAR_THRESHOLD = 1e-4  # a confidence this close to a threshold may route either way (rounding)


def axis_weights(n_in: int, n_out: int, mode: str, antialias: bool) -> tuple[torch.Tensor, int]:
    """``n_out x n_in`` integer weights of torch's uint8 resize along one axis, and their
    precision p (output = floor(weights @ x / 2**p + 0.5), clamped to 0..255).

    The float weights are torch's own (its resize applied to the unit vectors); they are then
    scaled and rounded as its uint8 kernel does (UpSampleKernel: compute_index_ranges_int16_weights).
    """
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
    kw: dict[str, Any] = {}
    if mode in ("bilinear", "bicubic"):
        kw = {"align_corners": False, "antialias": antialias}
    w = F.interpolate(basis, size=(1, n_out), mode=mode, **kw).reshape(n_in, n_out).T
    w_max, p = float(w.max()), 0
    while p < MAX_PRECISION and int(0.5 + w_max * (1 << (p + 1))) < (1 << 15):
        p += 1
    v = w * (1 << p)
    return torch.where(v < 0, torch.trunc(v - 0.5), torch.trunc(v + 0.5)).float(), p


def resize_plan(
    policy: ResizePolicy, h: int, w: int, r: int
) -> list[tuple[torch.Tensor, int] | None]:
    """(weights, precision) for the width pass and the height pass of resizing h x w to r x r
    (None: that axis keeps its size), centre crop included for the ``crop`` policy."""
    if policy.kind == "full":
        sizes, offsets = (r, r), (0, 0)
    else:
        s = round(r / policy.crop_pct)
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        sizes = (nh, nw)
        offsets = (int(round((nh - r) / 2.0)), int(round((nw - r) / 2.0)))
    if (h, w) == sizes:  # ResizePolicy does not resize at all then
        return [None, None]
    plan: list[tuple[torch.Tensor, int] | None] = []
    for n_in, n_out, off in ((w, sizes[1], offsets[1]), (h, sizes[0], offsets[0])):
        if n_in == n_out and off == 0 and n_out == r:
            plan.append(None)
            continue
        wts, p = axis_weights(n_in, n_out, policy.interpolation, policy.antialias)
        plan.append((wts[off : off + r], p))
    return plan


class StageGraph(nn.Module):
    """uint8 ``N x 3 x H x W`` in, logits out: the records' resize (two integer MatMuls, rounded
    like torch's kernel), the normalisation, then ``net``."""

    def __init__(
        self,
        net: nn.Module,
        plan: list[Any],
        mean: list[float],
        std: list[float],
        normalize: bool = True,  # False: pixels out (an int8 stage normalises in its own graph)
    ) -> None:
        super().__init__()
        self.net = net
        self.passes = []
        for i, step in enumerate(plan):  # i = 0: width (x @ W^T), 1: height (W @ x)
            if step is not None:
                wts, p = step
                self.register_buffer(f"w{i}", wts.T.contiguous() if i == 0 else wts)
                self.passes.append((i, 2.0**-p))
        s = torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * s))
        self.register_buffer("shift", -torch.tensor(mean).view(1, -1, 1, 1) / s)
        self.normalize = normalize

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        for i, inv in self.passes:
            w = getattr(self, f"w{i}")
            y = torch.matmul(x, w) if i == 0 else torch.matmul(w, x)
            x = torch.clamp(torch.floor(y * inv + 0.5), 0.0, 255.0)  # integer sums: exact in fp32
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resized(x)
        return self.net(x * self.scale + self.shift if self.normalize else x)


def resize_mismatch(graph: StageGraph, resize: ResizePolicy, images: torch.Tensor, r: int) -> float:
    """Share of pixels where the graph's resize differs from the sweep's (0.0: identical)."""
    want = resize(images, r).float()
    return float((graph.resized(images) != want).float().mean())


def _write_graph(
    graph: StageGraph, size: tuple[int, int], out: Path, opset: int, output: str = "logits"
) -> None:
    example = torch.zeros(1, 3, *size, dtype=torch.uint8)
    axes = {"images": {0: "batch"}, output: {0: "batch"}}
    try:
        quiet_export(graph, example, out, opset, axes, names=("images", output))
    except RuntimeError as e:
        raise ReswiseError(
            f"ONNX export of {out.name} failed ({str(e).splitlines()[0][:120]}); try another --opset"
        ) from None


def _write_int8_stage(
    pre: StageGraph, int8_net: Path, size: tuple[int, int], out: Path, opset: int
) -> None:
    """The stage graph of an int8 stage: the exported resize joined to the graph the sweep ran
    (normalisation + int8 network), unchanged, so its arithmetic is the records'."""
    import onnx
    from onnx import compose

    tmp = out.with_suffix(".pre.onnx")
    _write_graph(pre, size, tmp, opset, output="resized")
    first = compose.add_prefix(
        onnx.load(str(tmp)), "pre/", rename_inputs=False, rename_outputs=False
    )
    tmp.unlink()
    net = onnx.load(str(int8_net))
    net.ir_version = first.ir_version = max(net.ir_version, first.ir_version)
    joined = compose.merge_models(first, net, io_map=[("resized", "pixels")])
    onnx.save(joined, str(out))


def build_graphs(policy: dict[str, Any], lm: LoadedModel) -> dict[str, StageGraph]:
    """One StageGraph per stage (``stage_<r>``) and one for the fixed reference (``reference``);
    an int8 stage's holds the resize and normalisation only (its network is the int8 graph)."""
    pre = policy["preprocessing"]
    size = pre["input_size"]
    bn = stage_bn(policy, lm)
    ref = int(policy["reference"])
    prec = policy.get("precision") or ["fp32"] * len(policy["chain"])
    stages = [(f"stage_{r}", r, bn.get(r), p) for r, p in zip(policy["chain"], prec)]
    stages.append(("reference", ref, lm.extra.get(ref) or {}, "fp32"))
    graphs = {}
    for name, r, state, p in stages:
        net = nn.Identity() if p == "int8" else prepare_model(lm.model, state).cpu()
        plan = resize_plan(resize_policy(pre, r), size, size, r)
        graphs[name] = StageGraph(net, plan, pre["mean"], pre["std"], p != "int8").eval()
    return graphs


def _write_graphs(
    policy: dict[str, Any], lm: LoadedModel, graphs: dict[str, StageGraph], stage: Path, opset: int
) -> dict[str, dict[str, str]]:
    """Every graph file into ``stage`` (per stage, the reference, the fused cascade), each
    stamped with what it was exported for; their names and sha256 by graph name."""
    size = int(policy["preprocessing"]["input_size"])
    int8 = int8_stages(policy, lm, stage_bn(policy, lm))
    prec = dict(zip(policy["chain"], sealed_fields(policy)["precision"]))
    files = {}
    for name, graph in graphs.items():
        r, path = int(name.partition("_")[2] or policy["reference"]), stage / f"{name}.onnx"
        if name != "reference" and r in int8:
            _write_int8_stage(graph, int8[r], (size, size), path, opset)
        else:
            _write_graph(graph, (size, size), path, opset)
        _stamp(path, graph_metadata(policy, (r, prec[r] if name != "reference" else "fp32")))
        files[name] = {"file": path.name, "sha256": sha256_file(path)}
    # the same stages again as one graph, routing included: one call per batch
    fuse_cascade([stage / f"stage_{r}.onnx" for r in policy["chain"]], policy["thresholds"],
                 policy["signal"] or "max_softmax", policy["chain"], stage / "cascade.onnx")  # fmt: skip
    _stamp(stage / "cascade.onnx", graph_metadata(policy, None))
    files["fused"] = {"file": "cascade.onnx", "sha256": sha256_file(stage / "cascade.onnx")}
    return files


def _stamp(path: Path, meta: dict[str, str]) -> None:
    """``meta`` into the graph's ONNX metadata: what the runtime compares policy.json with."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(path))


def lock_path(out: Path) -> Path:
    """The lock beside ``out`` (not inside: the folder itself is replaced on success)."""
    return out.with_name(f".{out.name}.reswise.lock")


def _check_out(out: Path, policy: dict[str, Any]) -> None:
    """``out`` may be replaced whole: it is new, empty, or a previous export, and it does not
    hold the policy being exported."""
    check_destination(out, "--out", kind="folder")
    if not out.is_dir():
        return
    source = Path(policy["path"]).resolve()
    if source.parent == out.resolve():
        raise ReswiseError(
            f"--out {out} holds the policy file {source.name} being exported; the export replaces "
            "that folder, so give another --out"
        )
    names = {p.name for p in out.iterdir()}
    ours = {
        "policy.json",
        *(p.name for p in out.glob("*.onnx")),
        *(p.name for p in out.glob("*.bn.npz")),
    }
    previous = (out / "policy.json").is_file() and '"graphs"' in (out / "policy.json").read_text()
    foreign = sorted(names - ours) if previous else sorted(names)
    if foreign:
        raise ReswiseError(
            f"--out {out} holds other files ({', '.join(foreign[:3])}); the export replaces the "
            "folder whole, so give an empty folder or a previous export"
        )


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A sibling folder to write into, put in place of ``out`` only when the body succeeds: a
    failed check or a full disk leaves ``out`` as it was (absent, or the previous export)."""
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
        old = out.with_name(f"{stage.name}.old")
        moved = out.exists()
        if moved:
            out.rename(old)
        try:
            stage.rename(out)
        except OSError:
            if moved:  # put the previous export back: the message says nothing was changed
                old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise ReswiseError(
            f"cannot write the export into {out} ({e.strerror or e}); nothing was changed "
            "there: free space or fix the folder, then rerun"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_fits(images: torch.Tensor | None, size: int) -> None:
    if images is None:
        return
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ReswiseError("check images must be a uint8 tensor N x 3 x H x W")
    h, w = images.shape[2:]
    if (h, w) != (size, size):
        raise ReswiseError(
            f"the check images are {h} x {w} but the cascade takes its native {size} x {size} "
            "images; give --check-root a folder of images of that size (the sweep's images)"
        )


def export_policy(
    policy_path: str | Path,
    out: str | Path,
    *,
    lm: LoadedModel | None = None,
    check_images: torch.Tensor | None = None,
    opset: int = 17,
) -> dict[str, Any]:
    """Write ``out/``: ``stage_<r>.onnx`` per stage, ``cascade.onnx`` (the stages and their
    routing as one graph), ``reference.onnx`` (the fixed reference, for timing against) and
    ``policy.json`` (the policy plus a ``graphs`` section).

    ``check_images`` (uint8 ``N x 3 x S x S``, real images): the graphs' resize is compared with
    the sweep's pixel for pixel, and ONNX Runtime's cascade with :class:`AdaptiveClassifier`; a
    disagreement (``check_failures``) raises and leaves ``out`` as it was. The folder is
    locked while written, and replaced whole only once everything is written and checked.
    """
    ort = require_onnxruntime()
    policy = load_policy(policy_path)
    out = Path(out)
    _check_out(out, policy)
    size = int(policy["preprocessing"]["input_size"])
    _check_fits(check_images, size)
    lm = load_model_for(policy, lm)
    with hold(lock_path(out), f"--out {out}"), _staged(out) as stage:
        graphs = build_graphs(policy, lm)
        files = _write_graphs(policy, lm, graphs, stage, opset)
        shipped = {k: v for k, v in policy.items() if k != "path"}
        shipped["seal"] = seal_of(policy)  # the graphs record the same fields (graph_metadata)
        shipped["graphs"] = {
            "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "size": [size, size]},
            "stages": [files[f"stage_{r}"] for r in policy["chain"]],
            "reference": files["reference"],
            "fused": files["fused"],
            "opset": opset,
            "onnxruntime": ort.__version__,
        }
        write_atomic(stage / "policy.json", (json.dumps(shipped, indent=1) + "\n").encode())
        if check_images is not None:  # the runner reads policy.json: checked once it is written
            check = check_export(policy, lm, graphs, check_images, stage)
            failed = check_failures(check)
            if failed:
                raise ReswiseError(
                    f"export check failed on {check['n_check_images']} images ({'; '.join(failed)}); "
                    f"{out} was left as it was: export again (one export per folder at a time)"
                )
            shipped["graphs"]["check"] = check
            write_atomic(stage / "policy.json", (json.dumps(shipped, indent=1) + "\n").encode())
        # not needed by the graphs (baked in), kept so the policy file stays whole: `latency
        # --policy` on the shipped file rebuilds the int8 stages from the quantization file
        for side in (policy.get("bn_file"), policy.get("quant_file")):
            if side:
                shutil.copyfile(Path(policy["path"]).with_name(side["name"]), stage / side["name"])
    return {"out": str(out), "files": files, **shipped["graphs"].get("check", {})}


def check_failures(check: dict[str, Any]) -> list[str]:
    """What in an export check says the graphs do not do what the torch module does.

    Logits of a stage agree to float rounding (measured 5.7e-6 on ResNet-20), so a confidence
    that close to a threshold may send one image on to the next stage in one runner and not
    the other (seen: 1 image in 256). Such a flip is allowed; any other one is a fault.
    """
    failed = []
    for what, c in (("", check), ("fused graph: ", check.get("fused"))):
        if c is None:  # an export written before the fused graph existed
            continue
        if not c["max_abs_logit_diff_same_stage"] < TOLERANCE:
            diff = c["max_abs_logit_diff_same_stage"]
            failed.append(f"{what}max |logit diff| {diff:.2e} >= {TOLERANCE:g} at the same stage")
        if c["routing_flips_unexplained"]:
            failed.append(
                f"{what}{c['routing_flips_unexplained']} images answered at another stage with "
                f"a confidence not within {NEAR_THRESHOLD:g} of the threshold"
            )
    return failed


def _unexplained_flips(runner: Any, images: np.ndarray, res: np.ndarray, want: np.ndarray) -> int:
    """Images the two runners answer at different stages, except those whose confidence at the
    stage where they parted lies within ``NEAR_THRESHOLD`` of its threshold."""
    from .runtime import softmax_stats

    n = 0
    for i in np.flatnonzero(res != want):
        k = runner.chain.index(int(min(res[i], want[i])))
        if k >= len(runner.thresholds):
            n += 1  # both ran the last stage: they cannot part there
            continue
        out = runner.sessions[k].run(None, {"images": images[i : i + 1]})[0]
        conf = float(confidence(*softmax_stats(out), runner.signal)[0])
        n += abs(conf - runner.thresholds[k]) > NEAR_THRESHOLD
    return n


def check_export(
    policy: dict[str, Any],
    lm: LoadedModel,
    graphs: dict[str, StageGraph],
    images: torch.Tensor,
    out: Path,
) -> dict[str, Any]:
    """The exported cascade against the torch module on real images: resize pixels, predictions,
    resolution per image, largest logit difference."""
    from .runtime import OnnxCascade

    pre = policy["preprocessing"]
    mismatch = {
        str(r): resize_mismatch(graphs[f"stage_{r}"], resize_policy(pre, r), images, r)
        for r in policy["chain"]
    }
    module = AdaptiveClassifier(policy, lm)
    want = module(images)
    x, want_logits, want_res = images.numpy(), want.logits.numpy(), want.resolution.numpy()
    runner = OnnxCascade(out)
    check = {
        "n_check_images": int(len(images)),
        "resize_mismatch_pixels": mismatch,
        "resize_exact": all(v == 0.0 for v in mismatch.values()),
        **_compare(runner, runner(x), x, want_logits, want_res),
    }
    fused = _compare(runner, OnnxCascade(out, fused=True)(x), x, want_logits, want_res)
    return {**check, "fused": fused}


def _compare(
    runner: Any,
    got: tuple[np.ndarray, np.ndarray],
    x: np.ndarray,
    want_logits: np.ndarray,
    want_res: np.ndarray,
) -> dict[str, Any]:
    """One ONNX Runtime cascade's answers against the torch module's."""
    logits, res = got
    diff = np.abs(logits - want_logits).max(axis=1)
    same = res == want_res
    flips = int((~same).sum())
    return {
        "prediction_agreement": float(np.mean(logits.argmax(1) == want_logits.argmax(1))),
        "resolution_agreement": float(np.mean(same)),
        "max_abs_logit_diff": float(diff.max()),
        # images both answered at the same stage: the arithmetic itself, not a routing flip
        "max_abs_logit_diff_same_stage": float(diff[same].max()) if same.any() else 0.0,
        "routing_flips": flips,
        "routing_flips_unexplained": _unexplained_flips(runner, x, res, want_res) if flips else 0,
    }
