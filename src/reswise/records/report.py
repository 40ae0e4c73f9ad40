"""Run directories: results.json / results.csv (one flat schema), report.md, plot, per-sample records."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import SweepResult, write_atomic

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
    "eval_images_per_s",
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
                "eval_images_per_s": row["eval_images_per_s"],
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
        p = r.get("precision", "fp32")
        tag = "" if p == "fp32" else f" {p}"
        line = f"| {r['resolution']} x {r['resolution']}{tag} | {r['flops_drop_pct']:.2f} | "
        line += f"{r['acc_drop_pct']:.2f} |"
        if with_top1:
            lo, hi = r["acc_drop_ci"]
            line += f" {r['top1']:.2f} | [{lo:.2f}, {hi:.2f}] | {r['macs'] / 1e6:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def conditions(result: SweepResult) -> str:
    skipped = f", {len(result.skipped)} unreadable images skipped" if result.skipped else ""
    labels = f" ({result.meta['labels']})" if result.meta.get("labels") else ""
    return (
        f"Model `{result.model}` (weights: {result.weights}) on `{result.dataset}`, "
        f"{result.n} images{skipped}{labels}; resolution policy: {result.policy}; reference "
        f"{result.reference}x{result.reference}. Accuracy drop in points of top-1 against the "
        f"reference on the same images, with a paired 95% CI. FLOPs: torch.utils.flop_counter "
        f"(convolutions and matrix multiplies, 2 FLOPs per MAC)."
    )


def dataset_label(dataset: str) -> str:
    """A data folder named by its last two parts ("cifar10-jpeg/test"), not just "test"."""
    parts = Path(dataset).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else dataset


Point = tuple[float, float, str] | tuple[float, float, str, Sequence[float]]


def plot(points: dict[str, list[Point]], path: str | Path, title: str) -> None:
    """Accuracy drop vs FLOPs drop with the drop's 95% CI as error bars.

    ``points`` maps a series name to (flops_drop, acc_drop, label[, (ci_lo, ci_hi)]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, pts in points.items():
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        yerr = None
        if all(len(p) > 3 for p in pts):
            lo = [max(p[1] - p[3][0], 0.0) for p in pts]  # type: ignore[misc]
            hi = [max(p[3][1] - p[1], 0.0) for p in pts]  # type: ignore[misc]
            yerr = [lo, hi]
        fmt = "o-" if len(pts) > 1 else "s"
        ax.errorbar(xs, ys, yerr=yerr, fmt=fmt, capsize=3, label=name)
        for x, y, lab, *_ in pts:
            if lab and not (math.isnan(x) or math.isnan(y)):
                ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("FLOPs saved vs reference (%)")
    ax.set_ylabel("top-1 accuracy drop (points, 95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> None:
    """Render ``fig`` as PNG in memory, write it atomically (never half a PNG), close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    write_atomic(Path(path), buf.getvalue())


def write_report(result: SweepResult, out: str | Path) -> dict[str, Path]:
    """results.csv (one flat schema), report.md and accuracy_vs_flops.png beside the records."""
    out = Path(out)
    files = {
        "csv": out / "results.csv",
        "report": out / "report.md",
        "plot": out / "accuracy_vs_flops.png",
    }
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(flat_rows(result))
    write_atomic(files["csv"], buf.getvalue().encode())
    series: dict[str, list[Point]] = {
        "fixed resolution": [
            (r["flops_drop_pct"], r["acc_drop_pct"], str(r["resolution"]), r["acc_drop_ci"])
            for r in result.rows
        ]
    }
    text = f"# reswise sweep: {result.model}\n\n{conditions(result)}\n\n{seed_table(result.rows)}\n"
    if result.bn:
        series["BN recalibrated"] = [
            (r["flops_drop_pct"], r["acc_drop_pct"], "", r["acc_drop_ci"]) for r in result.bn.rows
        ]
        text += (
            f"\nWith BatchNorm statistics re-estimated per resolution on "
            f"{result.bn.calib_size} unlabeled images of `{result.bn.calib_root}` "
            f"(drops against the un-recalibrated reference):\n\n"
            f"{seed_table(result.bn.rows)}\n"
        )
    title = f"{result.model} on {dataset_label(result.dataset)}, n={result.n}"
    plot(series, files["plot"], title)
    text += f"\n![accuracy vs FLOPs]({files['plot'].name})\n"
    write_atomic(files["report"], text.encode())
    return files
