"""Run directories: results.json / results.csv (one flat schema), report.md, plot, per-sample records."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .evaluate import Records, SweepResult

CSV_FIELDS = [
    "model",
    "weights",
    "dataset",
    "n",
    "policy",
    "interpolation",
    "reference",
    "resolution",
    "top1",
    "top1_ci_lo",
    "top1_ci_hi",
    "top5",
    "acc_drop_pct",
    "acc_drop_ci_lo",
    "acc_drop_ci_hi",
    "macs",
    "flops",
    "params",
    "flops_drop_pct",
    "images_per_s",
    "latency_ms",
    "latency_drop_pct",
]


def flat_rows(result: SweepResult) -> list[dict[str, Any]]:
    """Self-describing rows: every row carries the conditions its numbers were measured under."""
    out = []
    for row in result.rows:
        out.append(
            {
                "model": result.model,
                "weights": result.weights,
                "dataset": result.dataset,
                "n": row["n"],
                "policy": result.policy,
                "interpolation": result.interpolation,
                "reference": result.reference,
                "resolution": row["resolution"],
                "top1": row["top1"],
                "top1_ci_lo": row["top1_ci"][0],
                "top1_ci_hi": row["top1_ci"][1],
                "top5": row["top5"],
                "acc_drop_pct": row["acc_drop_pct"],
                "acc_drop_ci_lo": row["acc_drop_ci"][0],
                "acc_drop_ci_hi": row["acc_drop_ci"][1],
                "macs": row["macs"],
                "flops": row["flops"],
                "params": row["params"],
                "flops_drop_pct": row["flops_drop_pct"],
                "images_per_s": row["images_per_s"],
                "latency_ms": row.get("latency_ms"),
                "latency_drop_pct": row.get("latency_drop_pct"),
            }
        )
    return out


def seed_table(rows: list[dict[str, Any]], with_top1: bool = True) -> str:
    """The study's table: Resolution | FLOPs Drop (%) | Accuracy Drop (%), plus top-1 and MACs."""
    head = "| Resolution | FLOPs Drop (%) | Accuracy Drop (%) |"
    sep = "|------------|----------------|-------------------|"
    if with_top1:
        head += " Top-1 (%) | 95% CI of drop | MMACs |"
        sep += "-----------|----------------|-------|"
    lines = [head, sep]
    for r in rows:
        line = f"| {r['resolution']} x {r['resolution']} | {r['flops_drop_pct']:.2f} | "
        line += f"{r['acc_drop_pct']:.2f} |"
        if with_top1:
            lo, hi = r["acc_drop_ci"]
            line += f" {r['top1']:.2f} | [{lo:.2f}, {hi:.2f}] | {r['macs'] / 1e6:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def conditions(result: SweepResult) -> str:
    skipped = f", {len(result.skipped)} unreadable images skipped" if result.skipped else ""
    return (
        f"Model `{result.model}` (weights: {result.weights}) on `{result.dataset}`, "
        f"{result.n} images{skipped}; resolution policy: {result.policy}; reference "
        f"{result.reference}x{result.reference}. Accuracy drop in points of top-1 against the "
        f"reference on the same images, with a paired 95% CI. FLOPs: torch.utils.flop_counter "
        f"(convolutions and matrix multiplies, 2 FLOPs per MAC)."
    )


def plot(points: dict[str, list[tuple[float, float, str]]], path: str | Path, title: str) -> None:
    """Accuracy drop vs FLOPs drop; `points` maps a series name to (flops_drop, acc_drop, label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, pts in points.items():
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        style = "o-" if len(pts) > 1 else "s"
        ax.plot(xs, ys, style, label=name)
        for x, y, lab in pts:
            if lab and not (math.isnan(x) or math.isnan(y)):
                ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("FLOPs saved vs reference (%)")
    ax.set_ylabel("top-1 accuracy drop (points)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_run(result: SweepResult, out: str | Path) -> dict[str, str]:
    """Write results.json, results.csv, report.md, accuracy_vs_flops.png and records.npz."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "results.json",
        "csv": out / "results.csv",
        "report": out / "report.md",
        "plot": out / "accuracy_vs_flops.png",
        "records": out / "records.npz",
    }
    meta = result.to_dict()
    meta["skipped"] = [{"path": p, "why": w} for p, w in result.skipped]
    files["json"].write_text(json.dumps(meta, indent=1) + "\n")
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(flat_rows(result))
    result.records.save(files["records"])
    series = {"fixed resolution": [(r["flops_drop_pct"], r["acc_drop_pct"], str(r["resolution"]))
                                   for r in result.rows]}  # fmt: skip
    text = f"# reswise sweep: {result.model}\n\n{conditions(result)}\n\n{seed_table(result.rows)}\n"
    if result.bn:
        files["records_bn"] = out / "records_bn.npz"
        result.bn["records"].save(files["records_bn"])
        series["BN recalibrated"] = [(r["flops_drop_pct"], r["acc_drop_pct"], "")
                                     for r in result.bn["rows"]]  # fmt: skip
        text += (f"\nWith BatchNorm statistics re-estimated per resolution on "
                 f"{result.bn['calib_size']} unlabeled images of `{result.bn['calib_root']}` "
                 f"(drops against the un-recalibrated reference):\n\n"
                 f"{seed_table(result.bn['rows'])}\n")  # fmt: skip
    plot(series, files["plot"], f"{result.model} on {Path(result.dataset).name}")
    files["report"].write_text(text + f"\n![accuracy vs FLOPs]({files['plot'].name})\n")
    return {k: str(v) for k, v in files.items()}


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], Records]:
    """Read a finished sweep's results.json and per-sample records (no model pass)."""
    from .errors import ReswiseError

    run_dir = Path(run_dir)
    meta_path, rec_path = run_dir / "results.json", run_dir / "records.npz"
    if not meta_path.is_file() or not rec_path.is_file():
        raise ReswiseError(
            f"{run_dir} is not a finished sweep (needs results.json and records.npz); "
            "run `reswise sweep ... --out DIR` first"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise ReswiseError(f"{meta_path} is not valid JSON; rerun the sweep") from None
    return meta, Records.load(rec_path)


def load_run_bn(run_dir: str | Path) -> Records | None:
    """The BN-recalibrated records of a sweep run with --recalibrate-bn, if any."""
    p = Path(run_dir) / "records_bn.npz"
    return Records.load(p) if p.is_file() else None
