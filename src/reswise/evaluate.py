"""One-pass multi-resolution sweep: decode each image once, evaluate it at every resolution.

``sweep(model, dataset, resolutions)`` returns a :class:`SweepResult` with one flat row per
resolution and per-sample :class:`Records` (label, top-k classes and probabilities, entropy per
resolution), so later analyses (selection, cascades, oracle) need no second model pass.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Dataset, ResizePolicy, normalizer, to_input
from .errors import ReswiseError
from .flops import flops_table
from .models import LoadedModel, ModelInfo
from .stats import paired_drop_ci, wilson


@dataclass
class Records:
    """Per-sample outcomes: arrays indexed [resolution, sample, k]."""

    resolutions: list[int]
    indices: np.ndarray  # int64 [N] positions in the dataset
    labels: np.ndarray  # int64 [N]
    topk_idx: np.ndarray  # int32 [R, N, k]
    topk_prob: np.ndarray  # float32 [R, N, k], softmax probabilities
    entropy: np.ndarray  # float32 [R, N], softmax entropy in nats

    def row(self, r: int) -> int:
        return self.resolutions.index(r)

    def correct(self, r: int, k: int = 1) -> np.ndarray:
        i = self.row(r)
        return (self.topk_idx[i, :, :k] == self.labels[:, None]).any(axis=1)

    def confidence(self, r: int, signal: str = "max_softmax") -> np.ndarray:
        """Higher means more confident: max-softmax, top-1 minus top-2 margin, or -entropy."""
        i = self.row(r)
        if signal == "max_softmax":
            return self.topk_prob[i, :, 0]
        if signal == "margin":
            return self.topk_prob[i, :, 0] - self.topk_prob[i, :, 1]
        if signal == "entropy":
            return -self.entropy[i]
        raise ReswiseError(
            f"unknown confidence signal '{signal}'; use max_softmax, margin or entropy"
        )

    def subset(self, mask_or_idx: np.ndarray) -> Records:
        s = mask_or_idx
        return Records(
            list(self.resolutions),
            self.indices[s],
            self.labels[s],
            self.topk_idx[:, s],
            self.topk_prob[:, s],
            self.entropy[:, s],
        )

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path,
            resolutions=np.array(self.resolutions),
            indices=self.indices,
            labels=self.labels,
            topk_idx=self.topk_idx,
            topk_prob=self.topk_prob,
            entropy=self.entropy,
        )

    @classmethod
    def load(cls, path: str | Path) -> Records:
        try:
            d = np.load(path, allow_pickle=False)
            return cls(
                [int(r) for r in d["resolutions"]],
                d["indices"],
                d["labels"],
                d["topk_idx"],
                d["topk_prob"],
                d["entropy"],
            )
        except (OSError, KeyError, ValueError) as e:
            raise ReswiseError(
                f"per-sample records {path} cannot be read ({e.__class__.__name__}); "
                "run the sweep again with --out"
            ) from None


@dataclass
class SweepResult:
    model: str
    weights: str
    dataset: str
    reference: int
    policy: str
    interpolation: str
    rows: list[dict[str, Any]]
    records: Records
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    fast_path: str = ""
    bn: dict[str, Any] | None = None  # BN-recalibrated pass: records, rows, calibration facts

    @property
    def n(self) -> int:
        return len(self.records.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights": self.weights,
            "dataset": self.dataset,
            "n": self.n,
            "reference": self.reference,
            "policy": self.policy,
            "interpolation": self.interpolation,
            "skipped_images": len(self.skipped),
            "fast_path": self.fast_path,
            "timings": self.timings,
            "rows": self.rows,
            **(
                {"bn_recalibration": {k: v for k, v in self.bn.items() if k != "records"}}
                if self.bn
                else {}
            ),
        }


def fold_for_inference(model: nn.Module, channels_last: bool = True) -> tuple[nn.Module, str]:
    """Fold BatchNorm into the preceding convolutions (torch.fx) and use channels-last.

    Returns a new module and a description of what was applied. A model torch.fx cannot trace
    (data-dependent Python in ``forward``) keeps its BatchNorm and runs eagerly.
    """
    from torch.fx.experimental.optimization import fuse

    applied = []
    try:
        fast = fuse(copy.deepcopy(model).eval())
        applied.append("conv-bn folded")
    except Exception:  # torch.fx raises many types for untraceable code
        fast = copy.deepcopy(model).eval()
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    return fast, ", ".join(applied) or "eager"


def default_batch_size(resolution: int) -> int:
    """Measured here: small batches keep activations in cache (128 beats 500 by ~1.5x at 32x32)."""
    return 128 if resolution <= 64 else 32


def check_resolutions(info: ModelInfo | None, resolutions: list[int]) -> None:
    if info is None:
        return
    small = [r for r in resolutions if r < info.min_size]
    if small:
        raise ReswiseError(
            f"resolution {small[0]} is too small for {info.name}: its downsampling needs at least "
            f"{info.min_size}x{info.min_size}; use resolutions >= {info.min_size}"
        )


def config_key(**kw: Any) -> str:
    return hashlib.sha1(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prefetch(fn: Callable[[int], Any], n: int) -> Iterator[Any]:
    """Yield fn(0..n-1), computing item i+1 in a thread while the caller works on item i."""
    box: dict[int, Any] = {}

    def work(i: int) -> None:
        try:
            box[i] = fn(i)
        except BaseException as e:  # re-raised in the caller's thread
            box[i] = e

    t = threading.Thread(target=work, args=(0,))
    t.start()
    for i in range(n):
        t.join()
        item = box.pop(i)
        if i + 1 < n:
            t = threading.Thread(target=work, args=(i + 1,))
            t.start()
        if isinstance(item, BaseException):
            raise item
        yield item


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA GPU when there is one, else the CPU; a clear error otherwise.

    One check for every command that takes ``--device`` (sweep, latency, train).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ReswiseError(f"--device {name!r} is not a device; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReswiseError("--device cuda but no CUDA GPU is visible here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ReswiseError(f"--device {name!r} is not supported; use auto, cpu or cuda")
    return dev


def sweep(
    model: nn.Module | LoadedModel,
    dataset: Dataset,
    resolutions: list[int],
    reference: int | None = None,
    *,
    policy: ResizePolicy | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    batch_size: int | None = None,
    topk: int = 5,
    fast: bool = True,
    device: str = "cpu",
    progress: bool = False,
    checkpoint_path: str | Path | None = None,
    shard: tuple[int, int] = (0, 1),
    bn_states: dict[int, dict[str, torch.Tensor]] | None = None,
    save_every_s: float = 30.0,
) -> SweepResult:
    """Evaluate ``model`` on ``dataset`` at every resolution, decoding each image once.

    ``model`` is a :class:`LoadedModel` (preprocessing facts come with it) or any ``nn.Module``
    (then pass ``mean``/``std``; ImageNet's are the default). ``checkpoint_path`` saves progress
    as it goes and resumes a run with the same configuration. ``shard=(rank, world)`` evaluates
    every world-th chunk starting at rank (used by the distributed sweep). ``bn_states`` maps a
    resolution to BatchNorm buffers to load before evaluating at it (BN recalibration).
    """
    device = str(resolve_device(device))
    if isinstance(model, LoadedModel):
        info, name, weights, net = model.info, model.info.name, model.weights, model.model
        if bn_states is None:  # weights that carry per-resolution BN/adapters are used with them
            from .bn_recal import load_bn_states

            bn_states = load_bn_states(model.extra.get("extra_state", {})) or None
            if bn_states:
                weights += f" + per-resolution BN statistics for {sorted(bn_states)}"
    else:
        info, name, weights, net = None, model.__class__.__name__, "user module", model
    mean = mean or (info.mean if info else (0.485, 0.456, 0.406))
    std = std or (info.std if info else (0.229, 0.224, 0.225))
    if policy is None:
        kind = "crop" if info is not None and info.task == "imagenet" else "full"
        policy = ResizePolicy(
            kind, info.crop_pct if info else 0.875, info.interpolation if info else "bilinear"
        )
    resolutions = list(resolutions)
    reference = reference if reference is not None else max(resolutions)
    if reference not in resolutions:
        resolutions = [reference, *resolutions]
    check_resolutions(info, resolutions)
    n = len(dataset)
    if n == 0:
        raise ReswiseError("the dataset is empty; check --data-root and --limit")
    bs = batch_size if batch_size is not None else default_batch_size(max(resolutions))
    if bs <= 0:
        raise ReswiseError(f"--batch-size must be positive, got {bs}")
    num_classes = None
    scale_shift = normalizer(mean, std)
    flops = flops_table(net, resolutions, reference)  # also proves every resolution runs

    fast_desc = "eager"

    def prepare(base: nn.Module) -> nn.Module:
        nonlocal fast_desc
        if fast:
            base, fast_desc = fold_for_inference(base, channels_last=(device == "cpu"))
        return base.eval().to(device)

    # one folded copy serves every resolution that keeps the shared weights; only resolutions
    # with their own BN statistics / adapters get a copy of their own
    shared: nn.Module | None = None
    nets: dict[int, nn.Module] = {}
    for r in resolutions:
        if bn_states and r in bn_states:
            own = copy.deepcopy(net)
            own.load_state_dict(bn_states[r], strict=False)
            nets[r] = prepare(own)
        else:
            shared = shared if shared is not None else prepare(net)
            nets[r] = shared

    rank, world = shard
    chunks = [(s, min(s + bs, n)) for s in range(0, n, bs)][rank::world]
    mine = np.concatenate([np.arange(a, b) for a, b in chunks]) if chunks else np.zeros(0, int)
    R, N = len(resolutions), len(mine)
    k = topk
    state = {
        "done": 0,
        "topk_idx": None,
        "topk_prob": None,
        "entropy": np.zeros((R, N), np.float32),
        "fwd": np.zeros(R),
    }
    key = config_key(
        model=name,
        weights=weights,
        data=dataset.name,
        n=n,
        res=resolutions,
        bs=bs,
        policy=repr(policy),
        mean=mean,
        std=std,
        shard=shard,
        fast=fast,
    )
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if ckpt and ckpt.is_file():
        d = np.load(ckpt, allow_pickle=False)
        if str(d["key"]) == key:
            state = {f: d[f] for f in ("topk_idx", "topk_prob", "entropy", "fwd")}
            state["done"] = int(d["done"])
    labels_all = dataset.labels.numpy()

    def load(ci: int) -> Any:
        a, b = chunks[ci]
        return dataset.get(torch.arange(a, b))

    t0 = time.perf_counter()
    last_save = t0
    pos = sum(b - a for a, b in chunks[: state["done"]])
    it = _prefetch(lambda i: load(i + state["done"]), len(chunks) - state["done"])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(chunks), initial=state["done"], unit="batch", desc=f"sweep {name}")
    with torch.inference_mode():
        for ci, images in enumerate(it, start=state["done"]):
            a, b = chunks[ci]
            for ri, r in enumerate(resolutions):
                t = time.perf_counter()
                x = to_input(policy(images, r), scale_shift, channels_last=(device == "cpu"))
                logits = nets[r](x.to(device)).float()
                if num_classes is None:
                    num_classes = logits.shape[1]
                    if len(dataset.classes) > num_classes:
                        raise ReswiseError(
                            f"the dataset has {len(dataset.classes)} classes but the model "
                            f"predicts {num_classes}; labels would not line up"
                        )
                    k = min(topk, num_classes)
                    if state["topk_idx"] is None:
                        state["topk_idx"] = np.zeros((R, N, k), np.int32)
                        state["topk_prob"] = np.zeros((R, N, k), np.float32)
                logp = torch.log_softmax(logits, 1)
                p = logp.exp()
                top = p.topk(k, 1)
                ent = -(p * logp).sum(1)
                state["fwd"][ri] += time.perf_counter() - t
                state["topk_idx"][ri, pos : pos + b - a] = top.indices.cpu().numpy()
                state["topk_prob"][ri, pos : pos + b - a] = top.values.cpu().numpy()
                state["entropy"][ri, pos : pos + b - a] = ent.cpu().numpy()
            pos += b - a
            if bar:
                bar.update(1)
            if ckpt and time.perf_counter() - last_save >= save_every_s:
                _save_progress(ckpt, key, ci + 1, state)
                last_save = time.perf_counter()
    if bar:
        bar.close()
    total = time.perf_counter() - t0
    if ckpt and ckpt.exists():
        ckpt.unlink()
    if state["topk_idx"] is None:  # an empty shard
        state["topk_idx"] = np.zeros((R, 0, k), np.int32)
        state["topk_prob"] = np.zeros((R, 0, k), np.float32)
    records = Records(
        resolutions,
        mine.astype(np.int64),
        labels_all[mine].astype(np.int64),
        state["topk_idx"],
        state["topk_prob"],
        state["entropy"],
    )
    result = SweepResult(
        model=name,
        weights=weights,
        dataset=dataset.name,
        reference=reference,
        policy=policy.describe(),
        interpolation=policy.interpolation,
        rows=[],
        records=records,
        skipped=list(getattr(dataset, "skipped", [])),
        fast_path=fast_desc,
        timings={
            "total_s": total,
            "forward_s": float(state["fwd"].sum()),
            "forward_s_by_res": [float(f) for f in state["fwd"]],
        },
    )
    result.rows = summarize(records, reference, flops, state["fwd"])
    return result


def _save_progress(path: Path, key: str, done: int, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        key=np.array(key),
        done=np.array(done),
        topk_idx=state["topk_idx"],
        topk_prob=state["topk_prob"],
        entropy=state["entropy"],
        fwd=state["fwd"],
    )
    tmp.replace(path)


def summarize(
    records: Records,
    reference: int,
    flops: list[dict[str, Any]],
    fwd_seconds: np.ndarray | None = None,
    ref_correct: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Flat rows: top-1/top-5 with Wilson CIs, accuracy drop with a paired CI, MACs, FLOPs drop.

    ``ref_correct`` overrides the reference's per-sample correctness (e.g. drops of a
    BN-recalibrated pass measured against the model as shipped).
    """
    n = len(records.labels)
    ref = records.correct(reference) if ref_correct is None else ref_correct
    by_res = {f["resolution"]: f for f in flops}
    rows = []
    for i, r in enumerate(records.resolutions):
        c1, c5 = records.correct(r), records.correct(r, 5)
        t1 = 100.0 * c1.mean() if n else float("nan")
        rows.append(
            {
                "resolution": r,
                "n": n,
                "top1": t1,
                "top1_ci": list(wilson(int(c1.sum()), n)),
                "top5": 100.0 * c5.mean() if n else float("nan"),
                "acc_drop_pct": 100.0 * ref.mean() - t1 if n else float("nan"),
                "acc_drop_ci": list(paired_drop_ci(ref, c1)),
                "macs": by_res[r]["macs"],
                "flops": by_res[r]["flops"],
                "params": by_res[r]["params"],
                "flops_drop_pct": by_res[r]["flops_drop_pct"],
                "images_per_s": (n / fwd_seconds[i])
                if fwd_seconds is not None and fwd_seconds[i] > 0
                else None,
            }
        )
    return rows
