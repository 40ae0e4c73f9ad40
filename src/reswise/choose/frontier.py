"""Which model at which resolution: the accuracy-vs-FLOPs Pareto front over several runs.

    runs = [reswise.load_run(d) for d in ("runs/lite0", "runs/lite1", "runs/lite2")]
    front = reswise.pareto_front(runs, budget_flops=8e8)
    print(front.table())

Every (model, weights, resolution, precision, crop) of runs on the same images is a point
(labelled e.g. "lite0 @ 224/int8"); the front keeps the points no cheaper point beats, cheaper
in FLOPs or, ``objective="time"``, in the ONNX Runtime ms per image the sweeps measured (on one
CPU: runs timed on different CPUs are refused). All comparisons are paired (the same images on both sides), so
their CIs are those of the per-image difference (``reswise.records.stats``). When a run chose its crops
on a calibration split (``--crop-pct auto``) or quantised int8 stages on one, every figure is
measured on that split's held-out part only, so the choice does not flatter it. numpy and matplotlib only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReswiseError
from ..records import SweepResult, jsonable, row_key, unstage, write_atomic
from ..records.report import save_figure
from ..records.rundir import check_writable
from ..records.stats import paired_drop_ci, wilson
from .choices import check_same_images, run_times, timed_stages
from .compare import weights_name
from .policies.split import calib_heldout_split

MATCH = 0.05  # two points "cost the same" within 5 % of FLOPs (or of time)
OPTIONAL = ("precision", "ms_per_image")  # keys a point leaves out while None


def top1_ci(correct: np.ndarray) -> tuple[float, float]:
    """Wilson 95% CI of top-1 in percent (exact at 0 of n and n of n)."""
    return wilson(int(correct.sum()), len(correct))


@dataclass
class Point:
    model: str
    resolution: int
    crop_pct: float | None  # None: whole image resized (no crop)
    flops: int
    params: int
    correct: np.ndarray  # bool per image of the reported part
    on_front: bool = False
    weights: str = ""  # short name: the model's weights tag, a checkpoint path or "random init"
    weights_sha256: str | None = None  # None: a run swept before runs recorded it
    name: str = ""  # the model, with its weights when the runs hold it with other weights too
    precision: str | None = None  # None: the run's records carry no precisions (all fp32)
    ms_per_image: float | None = None  # ONNX Runtime, batch 64, when the sweep timed it

    @property
    def stage(self) -> str:
        """``224`` (fp32) or ``224/int8``."""
        p = self.precision or "fp32"
        return str(self.resolution) if p == "fp32" else f"{self.resolution}/{p}"

    @property
    def line(self) -> str:
        """The plotted series: one per model, weights and precision."""
        p = self.precision or "fp32"
        return self.series if p == "fp32" else f"{self.series} {p}"

    def cost(self, objective: str) -> float:
        return float(self.ms_per_image if objective == "time" else self.flops)

    @property
    def top1(self) -> float:
        return 100.0 * float(self.correct.mean())

    @property
    def series(self) -> str:
        """The model and weights this point is one resolution of."""
        return self.name or self.model

    @property
    def label(self) -> str:
        crop = "" if self.crop_pct is None else f", crop {self.crop_pct:.3g}"
        return f"{self.series} @ {self.stage}{crop}"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "name": self.series,
            "resolution": self.resolution,
            "precision": self.precision,
            "crop_pct": self.crop_pct,
            "flops": self.flops,
            "macs": self.flops // 2,
            "ms_per_image": self.ms_per_image,
            "params": self.params,
            "top1": self.top1,
            "top1_ci": list(top1_ci(self.correct)),
            "on_front": self.on_front,
        }
        return {k: v for k, v in out.items() if v is not None or k not in OPTIONAL}


def compare(a: Point, b: Point) -> dict[str, Any]:
    """a - b in top-1 points with its paired 95% CI; distinguishable when the CI excludes 0."""
    lo, hi = paired_drop_ci(a.correct, b.correct)
    return {
        "a": a.label,
        "b": b.label,
        "diff": a.top1 - b.top1,
        "diff_ci": [lo, hi],
        "distinguishable": bool(lo > 0 or hi < 0),
    }


@dataclass
class Frontier:
    points: list[Point]
    n: int
    part: str  # which images every figure is measured on
    neighbours: list[dict[str, Any]] = field(default_factory=list)  # along the front
    matched: list[dict[str, Any]] = field(default_factory=list)  # other models at equal FLOPs
    budget: dict[str, Any] | None = None
    objective: str = "flops"  # what "cheaper" means: FLOPs, or measured time per image
    timed_on: dict[str, Any] | None = None  # the CPU the times were measured on

    @property
    def front(self) -> list[Point]:
        return [p for p in self.points if p.on_front]

    @property
    def timed(self) -> bool:
        return all(p.ms_per_image is not None for p in self.points)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "n": self.n,
            "images": self.part,
            "points": [p.to_dict() for p in self.points],
            "front": [p.label for p in self.front],
            "neighbours": self.neighbours,
            "matched_flops": self.matched,
            "budget": self.budget,
        }
        if self.timed:  # as in the choosers' results: only when the runs were timed
            out.update(objective=self.objective, timed_on=self.timed_on)
        return out

    def table(self) -> str:
        """Markdown: every point, the front marked, each front point against the previous one."""
        vs = {d["a"]: d for d in self.neighbours}
        lines = [
            f"Top-1 on {self.part} (n = {self.n}); CIs are paired 95% intervals of the "
            "difference to the previous point on the front.",
            "",
            "| model | weights | resolution | crop | MMACs | "
            + ("ms/image | " if self.timed else "")
            + "top-1 (%) | 95% CI | front | vs previous front point (points) |",
            "|---|---|---:|---:|---:|" + ("---:|" if self.timed else "") + "---:|---|:---:|---|",
        ]
        for p in self.points:
            lo, hi = top1_ci(p.correct)
            sha = f" ({p.weights_sha256[:8]})" if p.weights_sha256 else ""
            crop = "-" if p.crop_pct is None else f"{p.crop_pct:.3g}"
            d = vs.get(p.label)
            cmp = ""
            if d:
                same = "" if d["distinguishable"] else ", not distinguishable"
                cmp = f"{d['diff']:+.1f} [{d['diff_ci'][0]:+.1f}, {d['diff_ci'][1]:+.1f}]{same}"
            ms = f"{p.ms_per_image:.4g} | " if self.timed else ""
            lines.append(
                f"| {p.model} | {p.weights}{sha} | {p.stage} | {crop} | "
                f"{p.flops / 2e6:.1f} | {ms}{p.top1:.1f} | [{lo:.1f}, {hi:.1f}] | "
                f"{'*' if p.on_front else ''} | {cmp} |"
            )
        if self.matched:
            what = "time" if self.objective == "time" else "FLOPs"
            lines += ["", f"Equal {what} (within 5 %), bigger model minus smaller one:", ""]
            lines += [_matched_line(d) for d in self.matched]
        if self.budget:
            lines += ["", self.budget["answer"]]
        return "\n".join(lines)


def _matched_line(d: dict[str, Any]) -> str:
    lo, hi = d["diff_ci"]
    verdict = "distinguishable" if d["distinguishable"] else "not distinguishable"
    gap = f"{d['flops_gap_pct']:+.1f} % FLOPs" if "flops_gap_pct" in d else (
        f"{d['time_gap_pct']:+.1f} % time"
    )  # fmt: skip
    return (
        f"* {d['a']} vs {d['b']} ({gap}): {d['diff']:+.1f} points, "
        f"95% CI [{lo:+.1f}, {hi:+.1f}], {verdict}"
    )


def _crop_of(run: SweepResult, i: int) -> float | None:
    crops = run.records.crop_pct
    if crops is not None and not np.isnan(crops[i]):
        return float(crops[i])
    found = re.search(r"round\(r / ([0-9.]+)\)", run.policy)
    return float(found.group(1)) if found else None


def _split_of(run: SweepResult) -> dict[str, Any] | None:
    """The split a run chose crops on, or calibrated its int8 stages on (when it has them)."""
    split = (run.meta.get("crop_auto") or {}).get("split")
    if split is None and any(unstage(k)[1] != "fp32" for k in run.records.keys):
        split = (run.meta.get("quant") or {}).get("calib_split")
    return split


def reported_part(runs: list[SweepResult]) -> tuple[np.ndarray, str]:
    """Indices every figure is measured on: the held-out part of the split crops were chosen on
    or int8 stages calibrated on, else all images."""
    n = runs[0].n
    splits = {
        json.dumps({"calib_frac": s["calib_frac"], "seed": s["seed"]}, sort_keys=True)
        for run in runs
        if (s := _split_of(run))
    }
    if not splits:
        return np.arange(n), f"all {n} images"
    if len(splits) > 1:
        raise ReswiseError(
            "the runs chose their crops or calibrated int8 on different splits (--calib-frac/"
            "--seed); sweep them with the same values so one held-out part is unseen by all"
        )
    split = json.loads(splits.pop())
    _, held = calib_heldout_split(n, split["calib_frac"], split["seed"])
    return held, f"the held-out part ({split['calib_frac']:.0%} calibration, seed {split['seed']})"


def _names(runs: list[SweepResult]) -> list[str]:
    """Per run, what its points are called: the model, or "model (weights)" when the runs hold
    the model with other weights too (and the sha256's start when those have the same name)."""

    def key(run: SweepResult) -> str:  # the weights' values where recorded, else their name
        return run.meta.get("weights_sha256") or run.weights

    names = []
    for run in runs:
        others = [r for r in runs if r.model == run.model and key(r) != key(run)]
        name = f"{run.model} ({weights_name(run)})" if others else run.model
        if any(weights_name(r) == weights_name(run) for r in others):
            sha = run.meta.get("weights_sha256")
            name = f"{name[:-1]}, sha256 {sha[:8] if sha else 'not recorded'})"
        twins = [r for r in runs if r is not run and r.model == run.model and key(r) == key(run)]
        if twins:  # the same weights swept twice (another int8 calibration, say): the run names it
            name = f"{name} [{Path(run.directory or '?').name}]"
        names.append(name)
    return names


def _points(runs: list[SweepResult], part: np.ndarray, objective: str) -> list[Point]:
    points = []
    for run, name in zip(runs, _names(runs), strict=True):
        times = run_times(run)
        for i, key in enumerate(run.records.keys):
            r, prec = unstage(key)
            row = next(x for x in run.rows if row_key(x) == key)
            correct = run.records.correct(key)[part]
            p = Point(run.model, r, _crop_of(run, i), int(row["flops"]), row["params"], correct)
            p.weights, p.name = weights_name(run), name
            p.weights_sha256 = run.meta.get("weights_sha256")
            p.precision = None if run.records.precision is None else prec
            p.ms_per_image = None if times is None else times[key]
            points.append(p)
    return sorted(points, key=lambda p: (p.cost(objective), -p.top1))


def _mark_front(points: list[Point]) -> None:
    """A point is on the front when every cheaper (or equally cheap) point is less accurate."""
    best = -1.0
    for p in points:  # sorted by cost, then by accuracy, best first
        p.on_front = p.top1 > best
        best = max(best, p.top1)


def _matched(
    points: list[Point], tol: float = MATCH, objective: str = "flops"
) -> list[dict[str, Any]]:
    out = []
    for i, a in enumerate(points):
        for b in points[i + 1 :]:
            ca, cb = a.cost(objective), b.cost(objective)
            if a.series == b.series or abs(ca - cb) > tol * max(ca, cb):
                continue
            big, small = (a, b) if a.params >= b.params else (b, a)
            d = compare(big, small)
            gap = big.cost(objective) / small.cost(objective) - 1.0
            d["time_gap_pct" if objective == "time" else "flops_gap_pct"] = 100.0 * gap
            out.append(d)
    return out


def _budget(points: list[Point], limit: float, objective: str = "flops") -> dict[str, Any]:
    """The best point within ``limit`` FLOPs (or ms per image, ``objective="time"``)."""
    if objective == "time":
        key, b = "budget_ms", f"{limit:.4g} ms per image"
        cost = lambda p: f"{p.ms_per_image:.4g} ms per image"  # noqa: E731
    else:
        # 4 digits: a point 0.28 MFLOPs over the budget must not print as the budget itself
        key, b = "budget_flops", f"{limit / 1e6:.4g} MFLOPs ({limit / 2e6:.4g} MMACs)"
        cost = lambda p: f"{p.flops / 1e6:.4g} MFLOPs"  # noqa: E731
    within = [p for p in points if p.cost(objective) <= limit]
    if not within:
        cheapest = min(points, key=lambda p: p.cost(objective))
        return {
            key: limit,
            "best": None,
            "answer": f"No point fits in {b}; the cheapest is {cheapest.label} at "
            f"{cost(cheapest)}.",
        }
    best = max(within, key=lambda p: (p.top1, -p.cost(objective)))
    ties = [compare(best, p) for p in within if p is not best]
    same = [d["b"] for d in ties if not d["distinguishable"]]
    answer = f"At {b}: {best.label} ({best.top1:.1f} %, {cost(best)})."
    if same:
        answer += f" Not distinguishable from it on these images: {', '.join(same)}."
    return {key: limit, "best": best.to_dict(), "ties": ties, "answer": answer}


def _check_runs(runs: list[SweepResult], timed: bool) -> None:
    """Runs on the same images, in the same order; timed on one CPU when times are compared."""
    if not runs:
        raise ReswiseError("frontier needs at least one run: --from RUN_DIR (repeatable)")
    for other in runs[1:]:
        check_same_images(runs[0], other, other.directory or other.model)
        if not np.array_equal(other.records.indices, runs[0].records.indices) or not (
            np.array_equal(other.records.labels, runs[0].records.labels)
        ):
            raise ReswiseError(
                f"run {other.directory} holds its images in another order or with other labels "
                f"than {runs[0].directory}; sweep both with the same flags"
            )
    if not timed:
        return
    for run in runs:
        run.cost("time")  # a run without times: refused in one line
    if len(_cpus(runs)) > 1:
        raise ReswiseError(
            "the runs were timed on different CPUs, so their times do not compare; sweep them "
            "on one machine, or use --objective flops"
        )


def _cpus(runs: list[SweepResult]) -> set[str]:
    return {json.dumps(run.meta.get("cpu"), sort_keys=True) for run in runs}


def pareto_front(
    runs: list[SweepResult],
    *,
    budget_flops: float | None = None,
    match_tol: float = MATCH,
    objective: str = "flops",
    budget_ms: float | None = None,
) -> Frontier:
    """The Pareto front of accuracy vs FLOPs (or, ``objective="time"``, vs the measured ms per
    image) over every point of ``runs`` (same images). ``budget_flops`` / ``budget_ms``: the
    best point within that many FLOPs / ms per image."""
    if objective not in ("flops", "time"):
        raise ReswiseError(f"unknown objective '{objective}'; use flops or time")
    if budget_flops is not None and budget_ms is not None:
        raise ReswiseError("give one budget: in FLOPs (--budget-flops) or in ms (--budget-ms)")
    if objective == "time" or budget_ms is not None:
        runs = [timed_stages(r) for r in runs]  # bf16 stages have no ONNX Runtime time
    _check_runs(runs, objective == "time" or budget_ms is not None)
    part, desc = reported_part(runs)
    points = _points(runs, part, objective)
    _mark_front(points)
    front = [p for p in points if p.on_front]
    neighbours = [compare(b, a) for a, b in zip(front, front[1:])]
    matched = _matched(points, match_tol, objective)
    result = Frontier(points, len(part), desc, neighbours, matched, objective=objective)
    result.timed_on = runs[0].meta.get("cpu") if len(_cpus(runs)) == 1 else None
    for limit, flag, kind in (
        (budget_flops, "--budget-flops", "flops"),
        (budget_ms, "--budget-ms", "time"),
    ):
        if limit is not None:
            if not limit > 0:
                raise ReswiseError(f"{flag} must be positive, got {limit}")
            result.budget = _budget(points, limit, kind)
    return result


def frontier_plot(result: Frontier, path: str | Path, title: str) -> None:
    """Top-1 vs MMACs (or ms per image) per model and precision (Wilson 95% CIs), the front as
    a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = result.objective == "time"
    x_of = (lambda p: p.ms_per_image) if timed else (lambda p: p.flops / 2e6)  # noqa: E731
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for series in dict.fromkeys(p.line for p in result.points):
        pts = sorted((p for p in result.points if p.line == series), key=x_of)
        xs = [x_of(p) for p in pts]
        ys = [p.top1 for p in pts]
        cis = [top1_ci(p.correct) for p in pts]
        # top1_ci holds the point; max() keeps an interval that did not from being a traceback
        yerr = [[max(y - c[0], 0.0) for y, c in zip(ys, cis)],
                [max(c[1] - y, 0.0) for y, c in zip(ys, cis)]]  # fmt: skip
        ax.errorbar(xs, ys, yerr=yerr, fmt="o-", capsize=2, label=series, alpha=0.85)
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(str(p.resolution), (x, y), textcoords="offset points", xytext=(3, -10),
                        fontsize=7)  # fmt: skip
    front = result.front
    ax.plot([x_of(p) for p in front], [p.top1 for p in front], "k--", lw=0.8,
            label="Pareto front")  # fmt: skip
    ax.set_xlabel("ms per image (ONNX Runtime, batch 64)" if timed else "MMACs (conv + matmul)")
    ax.set_ylabel(f"top-1 (%), 95% CI, n = {result.n}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def write_frontier(result: Frontier, out: str | Path, title: str) -> dict[str, str]:
    """frontier.md, frontier.json and frontier.png into ``out``, each written atomically.

    ``reswise frontier`` checks ``out`` is writable before it works (``check_writable``); a
    write that still fails (full disk) is a one-line error naming the folder.
    """
    out = Path(out)
    check_writable(out)
    files = {k: out / f"frontier.{k}" for k in ("md", "json", "png")}
    text = f"# reswise frontier\n\n{result.table()}\n\n![frontier](frontier.png)\n"
    body = json.dumps(result.to_dict(), indent=1, default=jsonable) + "\n"
    try:
        frontier_plot(result, files["png"], title)
        write_atomic(files["json"], body.encode())
        write_atomic(files["md"], text.encode())
    except OSError as e:
        raise ReswiseError(
            f"cannot write the frontier into --out {out} ({e.strerror or e}); free space or "
            "give another --out"
        ) from None
    return {k: str(v) for k, v in files.items()}
