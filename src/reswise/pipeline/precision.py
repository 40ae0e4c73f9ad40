"""``sweep --precision fp32,int8[,bf16]``: the same images at every (resolution, precision).

int8 stages are ONNX Runtime graphs quantized per resolution (:mod:`reswise.measure.quantize`),
calibrated on images of the calibration half of the seeded split the choosers use, never the
held-out half; the split is recorded so a chooser run with another split is refused. bf16
stages run in torch under autocast where the machine has bf16 arithmetic. Every stage is timed
with ONNX Runtime at batch 64 and 1 on this machine (``--objective time``), with the CPU's name
and flags beside the times.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..choose.policies import calib_heldout_split
from ..data import Dataset, ResizePolicy, normalizer, to_input
from ..errors import ReswiseError
from ..measure import distributed
from ..measure.backends import Runner, cached_graph, ort_session, session_runner
from ..measure.doctor import bf16_support, cpu_flags, cpu_name, has_vnni
from ..measure.quantize import (
    CALIB_IMAGES,
    CHOOSE_IMAGES,
    METHODS,
    calibrate_stage,
    with_normalize,
)
from ..models import LoadedModel
from ..records import PRECISIONS, SweepResult, replacing, sha256_file, summarize

QUANT_DIR = "quant"  # in the run folder: the ranges that rebuild each int8 graph


def parse_precisions(text: str | list[str] | None) -> list[str]:
    """'fp32,int8' -> ['fp32', 'int8'] (fp32 always first: every drop is measured against it)."""
    if text is None:
        return []
    items = text if isinstance(text, list) else [p.strip() for p in str(text).split(",")]
    bad = [p for p in items if p not in PRECISIONS]
    if bad or not items:
        raise ReswiseError(
            f"unknown precision '{bad[0] if bad else text}'; use a list of {', '.join(PRECISIONS)}"
        )
    return ["fp32", *dict.fromkeys(p for p in items if p != "fp32")]


def cpu_facts() -> dict[str, Any]:
    """The CPU the times were measured on: a time-chosen policy records it."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    flags = cpu_flags()
    return {"name": cpu_name(), "flags": [f for f in wanted if f in flags], "vnni": has_vnni()}


def _nets_at(lm: LoadedModel, r: int) -> torch.nn.Module:
    """The weights at resolution ``r`` (per-resolution BN loaded where the weights carry it)."""
    extra = lm.extra.per_resolution if lm.extra else {}
    if r not in extra:
        return lm.model
    import copy

    own = copy.deepcopy(lm.model)
    own.load_state_dict(extra[r], strict=False)
    return own


def _feeds(data: Dataset, idx: np.ndarray, r: int, policy: ResizePolicy, lm: LoadedModel) -> Any:
    x = policy(data.get(torch.as_tensor(idx)), r)
    return to_input(x, normalizer(lm.info.mean, lm.info.std)).numpy()


def _calib_images(n: int, calib_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images the ranges come from and images the settings are chosen on: both drawn, seeded,
    from the calibration half; the held-out half is never read."""
    calib, _ = calib_heldout_split(n, calib_frac, seed)
    order = np.random.default_rng(seed + 1).permutation(calib)
    return np.sort(order[:CALIB_IMAGES]), np.sort(order[:CHOOSE_IMAGES])


def int8_runners(
    cfg: Any, lm: LoadedModel, data: Dataset, res: list[int], policy: ResizePolicy, out: Path
) -> tuple[dict[int, Runner], dict[str, Any], dict[int, Path]]:
    """An int8 ONNX Runtime runner per resolution, what the run records of each, its graph."""
    threads = torch.get_num_threads()
    cal_idx, choose_idx = _calib_images(len(data), cfg.calib_frac, cfg.seed)
    runners, stages, graphs = {}, {}, {}
    (out / QUANT_DIR).mkdir(parents=True, exist_ok=True)
    for r in res:
        fp32 = cached_graph(_nets_at(lm, r), lm.info.name, r)
        t = time.perf_counter()
        q = calibrate_stage(
            fp32,
            _feeds(data, cal_idx, r, policy, lm),
            _feeds(data, choose_idx, r, policy, lm),
            threads=threads,
            **quant_options(cfg.quant),
        )
        kept = out / QUANT_DIR / f"r{r}.ranges.json"
        with replacing(kept) as tmp:  # a full disk leaves no half file in the run
            shutil.copyfile(q.ranges, tmp)
        sha = sha256_file(q.graph)
        normed = with_normalize(q.graph, lm.info.mean, lm.info.std)
        backend = f"onnxruntime-int8:{sha[:12]}"
        runners[r] = session_runner(ort_session(normed, threads), backend, pixels=True)
        stages[str(r)] = {
            **q.to_dict(),
            "ranges": f"{QUANT_DIR}/{kept.name}",
            "graph_sha256": sha,
            "setup_s": time.perf_counter() - t,
        }
        graphs[r] = normed
    return runners, stages, graphs


def quant_options(text: str) -> dict[str, tuple[str, ...]]:
    """``--quant auto`` (every method, with and without float ends) or one method, all int8."""
    if text == "auto":
        return {}
    if text not in METHODS:
        raise ReswiseError(f"--quant must be auto or one of {', '.join(METHODS)}, got '{text}'")
    return {"methods": (text,), "keep_float": ("none",)}


def bf16_runners(lm: LoadedModel, res: list[int], device: str) -> dict[int, Runner]:
    """Eager torch under bf16 autocast, per resolution (its own BN where the weights have it)."""
    why = bf16_support(device)
    if why:
        raise ReswiseError(f"--precision bf16 is refused here: {why}")
    dev = "cuda" if device.startswith("cuda") else "cpu"
    runners = {}
    for r in res:
        net = _nets_at(lm, r).eval().to(device)

        def fn(x: torch.Tensor, net: torch.nn.Module = net) -> torch.Tensor:
            with torch.autocast(dev, dtype=torch.bfloat16):
                return net(x).float()

        runners[r] = Runner("eager-bf16", fn, channels_last=False)
    return runners


def time_ms(sess: Any, r: int, batch: int, min_s: float = 1.0) -> float:
    """Median milliseconds per call of an ONNX Runtime session on a batch (after a warm-up)."""
    x = np.random.default_rng(0).standard_normal((batch, 3, r, r), dtype=np.float32)
    feed = {sess.get_inputs()[0].name: x}
    sess.run(None, feed)
    times: list[float] = []
    while len(times) < 3 or (sum(times) < 1e3 * min_s and len(times) < 200):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(1e3 * (time.perf_counter() - t))
    return float(np.median(times))


def precision_pass(
    cfg: Any,
    lm: LoadedModel,
    data: Dataset,
    res: list[int],
    policy: ResizePolicy,
    result: SweepResult | None,
    out: Path,
    kw: dict[str, Any],
) -> None:
    """Add the int8 / bf16 rows, and the ONNX Runtime times of every stage, to ``result``."""
    precisions = parse_precisions(cfg.precision)
    quant_options(cfg.quant)  # a bad --quant fails before any pass
    if "bf16" in precisions and bf16_support(cfg.device):
        raise ReswiseError(f"--precision bf16 is refused here: {bf16_support(cfg.device)}")
    if "int8" in precisions and not cfg.device.startswith("cpu"):
        raise ReswiseError("int8 stages run on ONNX Runtime's CPU provider; use --device cpu")
    all_res = list(dict.fromkeys([cfg.reference or max(res), *res]))
    quant: dict[str, Any] = {}
    graphs: dict[int, Path] = {}
    for p in precisions[1:]:
        if p == "int8":
            runners, quant, graphs = int8_runners(cfg, lm, data, all_res, policy, out)
        else:
            runners = bf16_runners(lm, all_res, cfg.device)
        part = distributed.sweep(
            lm, data, res, cfg.reference, runners=runners,
            checkpoint_path=out / f"progress_{p}.npz", **kw,
        )  # fmt: skip
        if result is None or part is None:
            continue
        part.records.precision = [p] * len(part.records.resolutions)
        seconds = np.array(part.timings["eval_s_by_res"])
        ref = result.records.correct(result.reference)
        # a precision keeps its resolution's FLOPs: the rows so far hold them
        result.rows += summarize(
            part.records, result.reference, result.rows, seconds, ref_correct=ref
        )
        result.records = result.records.stack(part.records)
    if result is None:
        return
    for row in result.rows:
        row.setdefault("precision", "fp32")
    _time_stages(lm, result, torch.get_num_threads(), graphs)
    split = {"calib_frac": cfg.calib_frac, "seed": cfg.seed, "n": result.n}
    result.meta["quant"] = {"calib_split": split, "stages": quant} if quant else {}
    result.meta["precisions"] = precisions
    result.meta["cpu"] = cpu_facts()


def _time_stages(
    lm: LoadedModel, result: SweepResult, threads: int, graphs: dict[int, Path]
) -> None:
    """ONNX Runtime ms per batch of 64 and of 1, per stage (bf16 stages: not timed, ORT's CPU
    provider has no bf16 arithmetic)."""
    for row in result.rows:
        r, p = row["resolution"], row["precision"]
        if p == "bf16":
            continue
        path = cached_graph(_nets_at(lm, r), lm.info.name, r) if p == "fp32" else graphs[r]
        sess = ort_session(path, threads)
        row["ort_ms_b64"], row["ort_ms_b1"] = time_ms(sess, r, 64), time_ms(sess, r, 1)
    result.meta["ort_threads"] = threads
