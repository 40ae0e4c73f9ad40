"""Per-sample records of a sweep and the run object that carries them; numpy only.

Everything that chooses a resolution (``policies/``), compares choices or reads a finished run
works from these, so it never needs torch or a model pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReswiseError
from .files import jsonable, save_npz, write_atomic
from .stages import PRECISIONS, Stage, stage, stage_name, unstage
from .stats import paired_drop_ci, wilson

# Confidence signals, higher = more confident. Defined once: records, the cascade module and
# the exported runtime all score images with these.
SIGNALS = ("max_softmax", "margin", "entropy")


def confidence(topk_prob: np.ndarray, entropy: np.ndarray, signal: str) -> np.ndarray:
    """Score per image from its top-k softmax probabilities [..., k] and entropy [...]."""
    if signal == "max_softmax":
        return topk_prob[..., 0]
    if signal == "margin":
        return topk_prob[..., 0] - topk_prob[..., 1]
    if signal == "entropy":
        return -entropy
    raise ReswiseError(f"unknown confidence signal '{signal}'; use {', '.join(SIGNALS)}")


@dataclass
class Records:
    """Per-sample outcomes: arrays indexed [stage, sample, k].

    A stage is a resolution, or a (resolution, precision) pair when ``precision`` is given (one
    entry per row; None: every row fp32). Rows are looked up by stage key (:func:`stage`).
    """

    resolutions: list[int]
    indices: np.ndarray  # int64 [N] positions in the dataset
    labels: np.ndarray  # int64 [N]
    topk_idx: np.ndarray  # int32 [R, N, k]
    topk_prob: np.ndarray  # float32 [R, N, k], softmax probabilities
    entropy: np.ndarray  # float32 [R, N], softmax entropy in nats
    # a second key beside the resolution: the crop each row was evaluated with (NaN: the
    # policy's default); room for per-resolution crops without changing the format again
    crop_pct: np.ndarray | None = None  # float64 [R]
    precision: list[str] | None = None  # [R]; None: all fp32

    @property
    def keys(self) -> list[Stage]:
        """The stage key of every row, in row order."""
        if self.precision is None:
            return [int(r) for r in self.resolutions]
        return [stage(r, p) for r, p in zip(self.resolutions, self.precision)]

    def row(self, r: Stage) -> int:
        try:
            return self.keys.index(r)
        except ValueError:
            raise ReswiseError(
                f"stage {stage_name(r)} is not in the records "
                f"({', '.join(map(stage_name, self.keys))}); rerun the sweep with it"
            ) from None

    def correct(self, r: int, k: int = 1) -> np.ndarray:
        i = self.row(r)
        return (self.topk_idx[i, :, :k] == self.labels[:, None]).any(axis=1)

    def confidence(self, r: int, signal: str = "max_softmax") -> np.ndarray:
        """Higher means more confident: max-softmax, top-1 minus top-2 margin, or -entropy."""
        i = self.row(r)
        return confidence(self.topk_prob[i], self.entropy[i], signal)

    def subset(self, mask_or_idx: np.ndarray) -> Records:
        s = mask_or_idx
        return Records(
            list(self.resolutions),
            self.indices[s],
            self.labels[s],
            self.topk_idx[:, s],
            self.topk_prob[:, s],
            self.entropy[:, s],
            self.crop_pct,
            self.precision,
        )

    def only(self, keys: list[Stage]) -> Records:
        """The same images at fewer stages (in the order given)."""
        i = [self.row(k) for k in keys]
        crop = None if self.crop_pct is None else np.asarray(self.crop_pct)[i]
        prec = None if self.precision is None else [unstage(k)[1] for k in keys]
        return Records(
            [unstage(k)[0] for k in keys],
            self.indices,
            self.labels,
            self.topk_idx[i],
            self.topk_prob[i],
            self.entropy[i],
            crop,
            prec,
        )

    def stack(self, other: Records) -> Records:
        """These rows and ``other``'s (the same images at further stages) as one set of records."""
        if not np.array_equal(self.indices, other.indices):
            raise ReswiseError("records of different images cannot be stacked; rerun the sweep")
        k = min(self.topk_idx.shape[2], other.topk_idx.shape[2])
        crops = (self.crop_pct, other.crop_pct)
        crop = (
            None
            if crops[0] is None and crops[1] is None
            else np.concatenate(
                [
                    np.full(len(x.resolutions), np.nan) if c is None else np.asarray(c, np.float64)
                    for x, c in zip((self, other), crops)
                ]
            )
        )
        keys = self.keys + other.keys
        if len(set(keys)) != len(keys):
            raise ReswiseError("the stacked records repeat a stage; rerun the sweep")
        return Records(
            [unstage(k)[0] for k in keys],
            self.indices,
            self.labels,
            np.concatenate([self.topk_idx[:, :, :k], other.topk_idx[:, :, :k]]),
            np.concatenate([self.topk_prob[:, :, :k], other.topk_prob[:, :, :k]]),
            np.concatenate([self.entropy, other.entropy]),
            crop,
            [unstage(x)[1] for x in keys],
        )

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "resolutions": np.array(self.resolutions),
            "indices": self.indices,
            "labels": self.labels,
            "topk_idx": self.topk_idx,
            "topk_prob": self.topk_prob,
            "entropy": self.entropy,
        }
        if self.crop_pct is not None:
            out["crop_pct"] = np.asarray(self.crop_pct, np.float64)
        if self.precision is not None:
            out["precision"] = np.array(self.precision)
        return out

    def save(self, path: str | Path) -> None:
        save_npz(Path(path), self.arrays())  # atomic: a full disk leaves no half file

    @classmethod
    def load(cls, path: str | Path) -> Records:
        try:
            with np.load(path, allow_pickle=False) as d:
                rec = cls(
                    [int(r) for r in d["resolutions"]],
                    d["indices"],
                    d["labels"],
                    d["topk_idx"],
                    d["topk_prob"],
                    d["entropy"],
                    d["crop_pct"] if "crop_pct" in d.files else None,
                    [str(p) for p in d["precision"]] if "precision" in d.files else None,
                )
        except Exception as e:  # zip, zlib, pickle and shape errors all mean the same here
            raise ReswiseError(
                f"per-sample records {path} cannot be read ({e.__class__.__name__}); "
                "run the sweep again with --out"
            ) from None
        rec.check(str(path))
        return rec

    def check(self, source: str) -> None:
        """Shapes that agree with each other, or a clear error naming the file."""
        r, n = len(self.resolutions), len(self.labels)
        ok = (
            self.indices.shape == (n,)
            and self.topk_idx.ndim == 3
            and self.topk_idx.shape[:2] == (r, n)
            and self.topk_prob.shape == self.topk_idx.shape
            and self.entropy.shape == (r, n)
            and (self.precision is None or len(self.precision) == r)
        )
        if ok and self.precision is not None:
            bad = [p for p in self.precision if p not in PRECISIONS]
            ok = not bad and len(set(self.keys)) == r
        if not ok:
            raise ReswiseError(
                f"per-sample records {source} have inconsistent shapes; run the sweep again"
            )


@dataclass
class BNPass:
    """The sweep repeated with BatchNorm statistics re-estimated per resolution."""

    records: Records
    rows: list[dict[str, Any]]
    calib_root: str
    calib_size: int
    calib_split: dict[str, Any] | None = None
    # BN buffers per resolution as numpy arrays (name -> array); what a shipped choice needs
    states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calib_root": self.calib_root,
            "calib_split": self.calib_split,
            "calib_size": self.calib_size,
            "rows": self.rows,
        }


@dataclass
class SweepResult:
    """The run object: what a sweep measured, under which conditions, and its records."""

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
    bn: BNPass | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # further facts (label mapping, ...)
    directory: str | None = None  # the run directory it was written to or read from

    @property
    def n(self) -> int:
        return len(self.records.labels)

    @property
    def flops(self) -> dict[Stage, int]:
        """FLOPs per image of every stage (a precision changes the time, not the FLOPs)."""
        return {row_key(r): r["flops"] for r in self.rows}

    def cost(self, objective: str = "flops") -> dict[Stage, float]:
        """What a chooser minimises per stage: FLOPs per image, or ``time``: ONNX Runtime
        milliseconds per image at batch 64 as measured by the sweep on its machine."""
        if objective == "flops":
            return {k: float(v) for k, v in self.flops.items()}
        if objective != "time":
            raise ReswiseError(f"unknown objective '{objective}'; use flops or time")
        missing = [row_key(r) for r in self.rows if not r.get("ort_ms_b64")]
        if missing and all(unstage(k)[1] == "bf16" for k in missing):
            raise ReswiseError(
                f"stage {stage_name(missing[0])} has no measured time: bf16 stages run in torch "
                "and are not shipped (ONNX Runtime has no bf16 arithmetic); choose by time "
                "among the others with --precision fp32,int8, or use --objective flops"
            )
        if missing:
            raise ReswiseError(
                f"the run has no measured time for stage {stage_name(missing[0])}; rerun the "
                "sweep with --precision (it times every stage) or use --objective flops"
            )
        return {row_key(r): r["ort_ms_b64"] / 64.0 for r in self.rows}

    def restrict(self, resolutions: list[int] | None, reference: int | None) -> SweepResult:
        """This run seen through ``--resolutions`` (a subset) and ``--reference`` (one of them).

        Choosing commands then pick only among the given resolutions (each at every precision
        swept); the reference stays in the records, since every drop is measured against it.
        """
        have = self.records.resolutions
        ref = self.reference if reference is None else int(reference)
        wanted = list(dict.fromkeys([ref, *(resolutions or have)]))
        missing = [r for r in wanted if r not in have]
        if missing:
            raise ReswiseError(
                f"resolution {missing[0]} is not in the run's records "
                f"({sorted(set(have))}); choose among those, or rerun the sweep with it"
            )
        # the reference's other precisions are candidates only when --resolutions names it
        chosen = resolutions or have
        keep = [ref] + [k for r in chosen for k in self.records.keys if unstage(k)[0] == r]
        keep = list(dict.fromkeys(keep))
        rows = [next(r for r in self.rows if row_key(r) == k) for k in keep]
        bn = None
        if self.bn:
            bn_keep = [k for k in keep if k in self.bn.records.keys]
            bn_rows = [next(r for r in self.bn.rows if row_key(r) == k) for k in bn_keep]
            bn = replace(self.bn, records=self.bn.records.only(bn_keep), rows=bn_rows)
        return replace(self, records=self.records.only(keep), rows=rows, reference=ref, bn=bn)

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
            **self.meta,
            "rows": self.rows,
            **({"bn_recalibration": self.bn.to_dict()} if self.bn else {}),
        }

    # ------------------------------------------------------------ run directories
    def save(self, out: str | Path) -> dict[str, Path]:
        """results.json and the per-sample records (+ BN pass); report and plot are report.py's."""
        out = Path(out)
        files = {"json": out / "results.json", "records": out / "records.npz"}
        meta = self.to_dict()
        meta["skipped"] = [{"path": p, "why": w} for p, w in self.skipped]
        write_atomic(files["json"], (json.dumps(meta, indent=1, default=jsonable) + "\n").encode())
        save_npz(files["records"], self.records.arrays())
        if self.bn:
            files["records_bn"] = out / "records_bn.npz"
            save_npz(files["records_bn"], self.bn.records.arrays())
            if self.bn.states:
                files["bn_states"] = out / "bn_states.npz"
                flat = {f"{r}/{k}": v for r, s in self.bn.states.items() for k, v in s.items()}
                save_npz(files["bn_states"], flat)
        return files

    @classmethod
    def load(cls, run_dir: str | Path) -> SweepResult:
        """A finished sweep's run directory, with no model pass."""
        run_dir = Path(run_dir)
        meta_path, rec_path = run_dir / "results.json", run_dir / "records.npz"
        if not meta_path.is_file() or not rec_path.is_file():
            raise ReswiseError(
                f"{run_dir} is not a finished sweep (needs results.json and records.npz); "
                "run `reswise sweep ... --out DIR` first"
            )
        try:
            meta = json.loads(meta_path.read_text())
            known = ("model", "weights", "dataset", "reference", "policy", "interpolation", "rows")
            fields = {k: meta[k] for k in known}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ReswiseError(
                f"{meta_path} is not a reswise results file; rerun the sweep"
            ) from None
        records = Records.load(rec_path)
        bn = None
        if meta.get("bn_recalibration") and (run_dir / "records_bn.npz").is_file():
            b = meta["bn_recalibration"]
            states: dict[int, dict[str, np.ndarray]] = {}
            if (run_dir / "bn_states.npz").is_file():
                with np.load(run_dir / "bn_states.npz", allow_pickle=False) as d:
                    for key in d.files:
                        r, _, name = key.partition("/")
                        states.setdefault(int(r), {})[name] = d[key]
            bn = BNPass(
                Records.load(run_dir / "records_bn.npz"),
                b["rows"],
                b["calib_root"],
                b["calib_size"],
                b.get("calib_split"),
                states,
            )
        skipped = [(s["path"], s["why"]) for s in meta.get("skipped", [])]
        standard = {*known, "n", "skipped_images", "fast_path", "timings", "skipped"}
        extra = {k: v for k, v in meta.items() if k not in standard and k != "bn_recalibration"}
        return cls(
            **fields,
            records=records,
            skipped=skipped,
            timings=meta.get("timings", {}),
            fast_path=meta.get("fast_path", ""),
            bn=bn,
            meta=extra,
        )


def row_key(row: dict[str, Any]) -> Stage:
    """The stage a results row describes (rows before precisions are fp32)."""
    return stage(row["resolution"], row.get("precision", "fp32"))


def summarize(
    records: Records,
    reference: int,
    flops: list[dict[str, Any]],
    seconds: np.ndarray | None = None,
    ref_correct: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Flat rows: top-1/top-5 with Wilson CIs, accuracy drop with a paired CI, MACs, FLOPs drop.

    ``seconds`` per resolution is the time spent in resize + normalise + forward + softmax, so
    ``eval_images_per_s`` is the end-to-end evaluation rate of already-decoded images.
    ``ref_correct`` overrides the reference's per-sample correctness (e.g. drops of a
    BN-recalibrated pass measured against the model as shipped).
    """
    n = len(records.labels)
    ref = records.correct(reference) if ref_correct is None else ref_correct
    by_res = {f["resolution"]: f for f in flops}
    rows = []
    for i, key in enumerate(records.keys):
        r, prec = unstage(key)
        c1, c5 = records.correct(key), records.correct(key, 5)
        t1 = 100.0 * c1.mean() if n else float("nan")
        rows.append(
            {
                "resolution": r,
                **({} if records.precision is None else {"precision": prec}),
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
                "eval_images_per_s": (n / seconds[i])
                if seconds is not None and seconds[i] > 0
                else None,
            }
        )
    return rows
