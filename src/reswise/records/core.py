"""Per-sample records of a sweep and the run object that carries them; numpy only.

Everything that chooses a resolution (``policies/``), compares choices or reads a finished run
works from these, so it never needs torch or a model pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReswiseError
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
    """Per-sample outcomes: arrays indexed [resolution, sample, k]."""

    resolutions: list[int]
    indices: np.ndarray  # int64 [N] positions in the dataset
    labels: np.ndarray  # int64 [N]
    topk_idx: np.ndarray  # int32 [R, N, k]
    topk_prob: np.ndarray  # float32 [R, N, k], softmax probabilities
    entropy: np.ndarray  # float32 [R, N], softmax entropy in nats
    # a second key beside the resolution: the crop each row was evaluated with (NaN: the
    # policy's default); room for per-resolution crops without changing the format again
    crop_pct: np.ndarray | None = None  # float64 [R]

    def row(self, r: int) -> int:
        return self.resolutions.index(r)

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
        )

    def only(self, resolutions: list[int]) -> Records:
        """The same images at fewer resolutions (in the order given)."""
        i = [self.row(r) for r in resolutions]
        crop = None if self.crop_pct is None else np.asarray(self.crop_pct)[i]
        return Records(
            list(resolutions),
            self.indices,
            self.labels,
            self.topk_idx[i],
            self.topk_prob[i],
            self.entropy[i],
            crop,
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
        return out

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, **self.arrays())

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
        )
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
    def flops(self) -> dict[int, int]:
        return {int(r["resolution"]): r["flops"] for r in self.rows}

    def restrict(self, resolutions: list[int] | None, reference: int | None) -> SweepResult:
        """This run seen through ``--resolutions`` (a subset) and ``--reference`` (one of them).

        Choosing commands then pick only among the given resolutions; the reference stays in
        the records, since every drop is measured against it.
        """
        have = self.records.resolutions
        ref = self.reference if reference is None else int(reference)
        keep = list(dict.fromkeys([ref, *(resolutions or have)]))
        missing = [r for r in keep if r not in have]
        if missing:
            raise ReswiseError(
                f"resolution {missing[0]} is not in the run's records ({have}); choose among "
                "those, or rerun the sweep with it"
            )
        rows = [next(r for r in self.rows if r["resolution"] == k) for k in keep]
        bn = None
        if self.bn:
            bn_rows = [next(r for r in self.bn.rows if r["resolution"] == k) for k in keep]
            bn = replace(self.bn, records=self.bn.records.only(keep), rows=bn_rows)
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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename: never a half-written file,
    and no temporary file left behind when the write fails (a full disk, say)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    import io

    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    write_atomic(path, buf.getvalue())


def jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


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
                "eval_images_per_s": (n / seconds[i])
                if seconds is not None and seconds[i] > 0
                else None,
            }
        )
    return rows
