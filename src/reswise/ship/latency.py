"""The time a shipped cascade saves, measured, beside the FLOPs it saves.

    rows = measure_policy_latency("policy.json", "../shared/datasets/cifar10-jpeg/test")

The adaptive model and the fixed reference run on the policy's held-out images (so the
escalation rate is the real one), on the same backend with the same threads, batch by batch in
the images' order. A call is timed from the native-size uint8 batch in to the logits out:
resize, normalisation, every stage, the confidence signal and the gather/scatter all count.
Backends: ``eager`` (torch, BN folded, channels-last; CPU or CUDA) and ``onnxruntime`` (the
graphs ``reswise export --policy`` writes, run by :mod:`reswise.runtime`).
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..choose.policies.costs import chain_text
from ..data import load_data
from ..errors import ReswiseError
from ..measure.evaluate import images_fingerprint
from ..measure.inference import available_cpus, resolve_device, torch_threads
from ..models import LoadedModel
from ..records import stage
from .adaptive import AdaptiveClassifier, check_flops, load_model_for
from .policy_file import heldout_positions, load_policy, measured

POLICY_BACKENDS = ("eager", "onnxruntime")
POOLED = "adaptive-pooled"  # a row timed on whole passes (OnnxCascade.pooled), not per batch


def heldout_images(
    policy: dict[str, Any], data_root: str, lm: LoadedModel
) -> tuple[torch.Tensor, np.ndarray]:
    """The policy's held-out images (uint8) and labels, from ``data_root``, checked by the
    images' fingerprint to be the ones its figures were measured on."""
    facts = policy["images"]
    kind = facts.get("dataset_kind") or "imagefolder"
    cfg = SimpleNamespace(dataset=kind, data_root=data_root, split="test", limit=None,
                          on_corrupt="skip", seed=facts.get("seed"))  # fmt: skip
    if cfg.seed is not None:  # the sweep's own --limit/--seed subset, recorded with the policy
        cfg.limit = facts.get("limit")
        data = load_data(cfg, lm)
        subset = f"the sweep's --limit {cfg.limit} --seed {cfg.seed} subset, " if cfg.limit else ""
    else:
        data, subset = _guess_subset(cfg, facts["n"], int(policy["split"]["seed"]), lm)
    fix = "pass the --data-root its sweep used"
    if facts.get("seed") is None and subset:  # the guessed subset seed may be the wrong one
        fix = (
            "this policy file does not record its sweep's --seed: choose it again with "
            f"reswise cascade --from RUN --seed SWEEP_SEED --save (or {fix})"
        )
    have = images_fingerprint(data)
    if have != facts["fingerprint"]:
        raise ReswiseError(
            f"the images in {data_root} ({subset}{len(data)} images) are not the ones the policy "
            f"was measured on (fingerprint {have} vs {facts['fingerprint']}); {fix}"
        )
    held = torch.as_tensor(heldout_positions(policy))
    images = data.get(held)
    if isinstance(images, list):
        raise ReswiseError("timing a cascade needs same-size images (a CIFAR-like folder)")
    return images.contiguous(), data.labels[held].numpy()


def _guess_subset(
    cfg: SimpleNamespace, n: int, split_seed: int, lm: LoadedModel
) -> tuple[Any, str]:
    """A policy written before policies recorded the sweep's subset: all the images, or, when
    there are more than it was measured on, a --limit subset drawn with the split's seed
    (right only when the choosing command's --seed was the sweep's; the fingerprint says)."""
    cfg.seed = split_seed
    data = load_data(cfg, lm)
    if len(data) == n:
        return data, ""
    cfg.limit = n
    subset = f"a --limit {n} subset drawn with the split's --seed {split_seed}, "
    return load_data(cfg, lm), subset


def fixed_policy(policy: dict[str, Any], lm: LoadedModel) -> dict[str, Any]:
    """The reference alone as a one-stage policy: the baseline runs through the same code."""
    ref = int(policy["reference"])
    src = policy["bn"].get(str(ref)) or ("weights" if lm.extra.get(ref) else "shared")
    one = {**policy, "chain": [ref], "thresholds": [], "signal": None, "bn": {str(ref): src}}
    one.pop("quant_file", None)
    one.pop("graphs", None)  # an exported copy's graphs are the whole chain's, not this stage's
    # the baseline is the fp32 model at its native resolution, whatever the stages run at
    return {**one, "precision": ["fp32"]} if "precision" in policy else one


def _time_batches(
    fn: Callable[[Any], Any], batches: list[Any], sync: Callable[[], None]
) -> tuple[np.ndarray, list[Any]]:
    """Milliseconds per batch for one pass, and the outputs."""
    times, outs = [], []
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection inside one timed call would be charged to that batch
    try:
        for b in batches:
            sync()
            t = time.perf_counter()
            out = fn(b)
            sync()
            times.append(time.perf_counter() - t)
            outs.append(out)
    finally:
        if gc_was_on:
            gc.enable()
    return np.asarray(times) * 1e3, outs


def _runners(
    backend: str, policy: dict[str, Any], lm: LoadedModel, device: str, threads: int, tmp: str
) -> tuple[
    dict[str, Callable[[Any], Any]], Callable[[Any], Any], Callable[[Any], Any], Callable[[], None]
]:
    """Adaptive callables by row name (ONNX Runtime: per-stage sessions and the fused graph)
    and the fixed one, all returning numpy (logits, resolution); an input converter; the
    device sync."""
    if backend == "onnxruntime":
        from .export import export_policy
        from .runtime import OnnxCascade

        export_policy(policy["path"], tmp, lm=lm)
        runner = OnnxCascade(tmp, threads=threads)
        fused = OnnxCascade(tmp, threads=threads, fused=True)
        ref = int(policy["reference"])

        def fixed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return runner.reference(x), np.full(len(x), ref)

        # pooled: the same stages, each over all the images that reach it in full batches
        adaptive = {"adaptive": runner, "adaptive-fused": fused, POOLED: runner.pooled}
        return adaptive, fixed, lambda t: t.numpy(), lambda: None
    adaptive = AdaptiveClassifier(policy, lm, device=device)
    base = AdaptiveClassifier(fixed_policy(policy, lm), lm, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run(net: AdaptiveClassifier) -> Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
        return lambda x: net(x)

    return {"adaptive": run(adaptive)}, run(base), lambda t: t, sync


def _row(
    policy: dict[str, Any], name: str, times: list[np.ndarray], outs: list[Any], labels: np.ndarray
) -> dict[str, Any]:
    logits = np.concatenate(
        [np.asarray(o[0].cpu() if hasattr(o[0], "cpu") else o[0]) for o in outs]
    )
    res = np.concatenate([np.asarray(o[1].cpu() if hasattr(o[1], "cpu") else o[1]) for o in outs])
    total = float(np.median([t.sum() for t in times]))  # ms per pass over the images
    pooled = np.concatenate(times)
    fig = measured(policy, logits, res, labels[: len(res)]) if name != "fixed" else {
        "n": len(res), "top1": float(100.0 * np.mean(logits.argmax(1) == labels[: len(res)])),
    }  # fmt: skip
    per_batch = name != POOLED  # a pooled pass is one call: no per-batch latency
    return {
        "model": name,
        "images_per_s": 1e3 * len(res) / total,
        "pass_ms": total,
        "p50_ms": float(np.percentile(pooled, 50)) if per_batch else None,
        "p90_ms": float(np.percentile(pooled, 90)) if per_batch else None,
        **fig,
    }


def measure_policy_latency(
    policy_path: str,
    data_root: str,
    *,
    batch_sizes: list[int] | tuple[int, ...] = (1, 64),
    backends: tuple[str, ...] = POLICY_BACKENDS,
    device: str = "cpu",
    threads: int | None = None,
    limit: int | None = None,
    rounds: int = 2,
    warmup: int = 5,
) -> dict[str, Any]:
    """Per backend and batch size: throughput, p50/p90 per batch, top-1 and share answered per
    stage of the adaptive model and the fixed reference, and time saved beside FLOPs saved.

    ``rounds`` passes over the held-out images (the first ``limit`` of them) per model,
    interleaved fixed/adaptive; the pass time is their median. Batches are the images in order,
    full batches only.
    """
    device = str(resolve_device(device))
    bad = [b for b in backends if b not in POLICY_BACKENDS]
    if bad or (device != "cpu" and "onnxruntime" in backends):
        raise ReswiseError(
            f"a policy is timed with --backend eager or onnxruntime (CPU only), not {bad or backends}"
        )
    if not batch_sizes or min(batch_sizes) <= 0 or rounds <= 0:
        raise ReswiseError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    policy = load_policy(policy_path)
    skipped = []
    if "int8" in (policy.get("precision") or []) and "eager" in backends:
        # torch has no int8 kernels for these graphs: an eager row would time ONNX Runtime
        backends = tuple(b for b in backends if b != "eager")
        skipped.append("eager (int8 stages run in ONNX Runtime only)")
        if not backends:
            raise ReswiseError(
                "the policy has int8 stages, which run in ONNX Runtime only; time it with "
                "--backend onnxruntime"
            )
    lm = load_model_for(policy)
    check_flops(policy, lm)  # the FLOPs-saved column is computed from them
    images, labels = heldout_images(policy, data_root, lm)
    if limit:
        images, labels = images[:limit], labels[:limit]
    n_threads = threads or available_cpus()
    rows = []
    with torch_threads(n_threads), tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            adaptive, fixed, convert, sync = _runners(backend, policy, lm, device, n_threads, tmp)
            for bs in batch_sizes:
                full = (len(images) // bs) * bs
                if full == 0:
                    raise ReswiseError(f"batch size {bs} is more than the {len(images)} images")
                batches = [convert(images[s : s + bs]) for s in range(0, full, bs)]
                rows += _measure(policy, adaptive, fixed, batches, labels, sync, rounds, warmup,
                                 {"backend": backend, "batch_size": bs})  # fmt: skip
    return {
        "model": policy["model"],
        "chain": policy["chain"],
        "precision": policy.get("precision") or ["fp32"] * len(policy["chain"]),
        "signal": policy["signal"],
        "skipped_backends": skipped,
        "timed_on": policy.get("timed_on"),
        "device": device,
        "threads": n_threads,
        "n_images": int(len(images)),
        "policy_heldout": policy["heldout"],
        "rows": rows,
    }


def _measure(
    policy: dict[str, Any],
    adaptive: dict[str, Callable[[Any], Any]],
    fixed: Callable[[Any], Any],
    batches: list[Any],
    labels: np.ndarray,
    sync: Callable[[], None],
    rounds: int,
    warmup: int,
    facts: dict[str, Any],
) -> list[dict[str, Any]]:
    """Every model on the same batches, interleaved; the adaptive rows carry the savings.
    The pooled row gets the batches as one array and runs its stages in batches of that size."""
    runners = {"fixed": fixed, **adaptive}
    if POOLED in runners:
        runners[POOLED] = partial(runners[POOLED], batch_size=facts["batch_size"])
    whole = [np.concatenate(batches)] if POOLED in runners else []
    with torch.inference_mode():
        for name, fn in runners.items():
            for b in whole if name == POOLED else batches[:warmup]:  # allocation, cache fills
                fn(b)
        times: dict[str, list[np.ndarray]] = {name: [] for name in runners}
        outs: dict[str, list[Any]] = {}
        for _ in range(rounds):
            for name, fn in runners.items():
                t, outs[name] = _time_batches(fn, whole if name == POOLED else batches, sync)
                times[name].append(t)
    fixed_row = _row(policy, "fixed", times["fixed"], outs["fixed"], labels)
    rows = [{**facts, **fixed_row, "resolution": int(policy["reference"])}]
    for name in adaptive:
        row = _row(policy, name, times[name], outs[name], labels)
        row["time_saved_pct"] = 100.0 * (1.0 - row["pass_ms"] / fixed_row["pass_ms"])
        row["speedup"] = row["images_per_s"] / fixed_row["images_per_s"]
        rows.append({**facts, **row})
    return rows


def stages_text(result: dict[str, Any]) -> str:
    """[20/int8, 24/int8, 32]: the chain with each stage's precision (fp32 unmarked)."""
    return chain_text([stage(r, p) for r, p in zip(result["chain"], result["precision"])])


def format_policy_latency(result: dict[str, Any]) -> str:
    """Markdown table: one row per backend, batch size and model, savings on the adaptive row."""
    head = (
        "| backend | batch | model | images/s | p50 ms/batch | p90 ms/batch | top-1 % "
        "| answered per stage % | time saved % | speed-up | FLOPs saved % |"
    )
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    stages = stages_text(result)
    for r in result["rows"]:
        adaptive = r["model"] != "fixed"
        name = f"{r['model']} {stages}" if adaptive else f"fixed {r.get('resolution', '')} fp32"
        shares = " / ".join(f"{s:.1f}" for s in r["stage_share_pct"]) if adaptive else ""
        saved = (
            f"{r['time_saved_pct']:.1f} | {r['speedup']:.2f}x | {r['flops_drop_pct']:.1f}"
            if adaptive
            else " | | "
        )
        p50, p90 = ("—" if r[k] is None else f"{r[k]:.3f}" for k in ("p50_ms", "p90_ms"))
        lines.append(
            f"| {r['backend']} | {r['batch_size']} | {name} | {r['images_per_s']:.0f} "
            f"| {p50} | {p90} | {r['top1']:.2f} | {shares} | {saved} |"
        )
    return "\n".join(lines)
