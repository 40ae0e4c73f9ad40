"""`random`, `select`, `cascade`, `compare`: choose resolutions from a sweep's records."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ReswiseError
from .common import add_sweep_args, parse_floats, records_source


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from", dest="from_run", help="a finished sweep's run directory (no model pass)"
    )
    before = len(p._actions)
    add_sweep_args(p, required=False)
    # what --from makes meaningless: given with it, they are refused instead of ignored
    sweep_only = [
        (a.dest, a.option_strings[0], a.default)
        for a in p._actions[before:]
        if a.dest not in FROM_HONOURS
    ]
    p.set_defaults(sweep_only=sweep_only)
    if "--precision" not in p._option_string_actions:  # the sweep flag, when it has one
        p.add_argument("--precision", help="precisions to choose among, e.g. fp32,int8")


FROM_HONOURS = {"resolutions", "reference", "seed", "json", "threads", "precision"}


def _objective(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--objective",
        default="flops",
        choices=["flops", "time"],
        help="minimise FLOPs (default) or the ONNX Runtime time per image the sweep measured "
        "(batch 64, on its CPU; needs a sweep with --precision)",
    )


def _budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-drop", type=float, default=1.0, help="top-1 points you accept to lose")
    p.add_argument("--confidence", type=float, default=0.95, help="one-sided, for the bound")
    p.add_argument("--calib-frac", type=float, default=0.5, help="share of images used to choose")


def _save(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save",
        metavar="POLICY.json",
        help="write the choice as a policy file (model, weights hash, preprocessing, stages, "
        "held-out figures) for AdaptiveClassifier and `reswise export --policy`",
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser("random", help="random resolution per image (from a sweep's records)")
    _source(p)
    p.add_argument("--weights", help="probabilities per resolution, e.g. 0.5,0.25,0.25")
    p.set_defaults(func=run_random)

    p = sub.add_parser("select", help="cheapest resolution within an accuracy budget, with a bound")
    _source(p)
    _budget(p)
    p.add_argument(
        "--test",
        default="bootstrap",
        choices=["bootstrap", "exact"],
        help="paired bootstrap (default) or exact McNemar/Clopper-Pearson bound",
    )
    _objective(p)
    _save(p)
    p.set_defaults(func=run_select)

    p = sub.add_parser("cascade", help="confidence cascade of resolutions under a budget")
    _source(p)
    _budget(p)
    p.add_argument("--signal", default="auto", choices=["auto", "max_softmax", "margin", "entropy"])
    p.add_argument("--max-len", type=int, default=3, help="longest chain searched")
    p.add_argument(
        "--headroom",
        action="store_true",
        help="also show, in hindsight, what two-stage chains could save with each confidence "
        "signal and with a perfect one (why the cascade saves what it does)",
    )
    _objective(p)
    _save(p)
    p.set_defaults(func=run_cascade)

    p = sub.add_parser("compare", help="fixed, random, selected, BN-recalibrated, cascade, oracle")
    _source(p)
    _budget(p)
    p.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="LABEL=RUN_DIR",
        help="rows from another run on the same images (e.g. adapted=runs/x_adapted)",
    )
    p.add_argument("--max-len", type=int, default=3)
    _objective(p)
    p.set_defaults(func=run_compare)


def _ci(d: dict[str, Any]) -> str:
    lo, hi = d["acc_drop_ci"]
    return f"95% CI {lo:.2f} .. {hi:.2f}"


def _stage(r: int, precision: str | None) -> str:
    """How the CLI spells a stage: ``24x24`` (fp32), ``24/int8``."""
    return f"{r}x{r}" if precision in (None, "fp32") else f"{r}/{precision}"


def _names(res: list[int], precision: list[str] | None) -> list[str]:
    """Stages of a chain: ``24``, ``24/int8``."""
    from ..records import stage, stage_name

    return [stage_name(stage(r, p)) for r, p in zip(res, precision or ["fp32"] * len(res))]


def _time(d: dict[str, Any]) -> str:
    """``, time saved 41.20 % (0.083 ms/image, on CPU)`` when the result carries times."""
    if d.get("time_saved_pct") is None:
        return ""
    ms = d.get("ms_per_image", d.get("mean_ms_per_image"))
    cpu = (d.get("timed_on") or {}).get("name", "the sweep's CPU")
    return f", time saved {d['time_saved_pct']:.2f} % ({ms:.4g} ms/image on {cpu})"


def _run(args: argparse.Namespace) -> Any:
    """The run to choose from, seen through ``--precision`` when it comes ``--from`` a sweep."""
    from ..choose.choices import with_precisions

    run = records_source(args)
    wanted = getattr(args, "precision", None)
    if run is None or not wanted or not args.from_run:
        return run
    return with_precisions(run, [p.strip() for p in wanted.split(",") if p.strip()])


def run_random(args: argparse.Namespace) -> dict[str, Any]:
    from ..choose.choices import random_choice
    from ..data import parse_resolutions

    weights = parse_floats(args.weights, "--weights") if args.weights else None
    run = _run(args)
    if run is None:
        return {}
    wanted = parse_resolutions(args.resolutions) if args.resolutions else None
    out = {
        **random_choice(run, seed=args.seed, weights=weights, resolutions=wanted).to_dict(),
        "model": run.model,
        "dataset": run.dataset,
        "reference": run.reference,
    }
    if not args.json:
        names = out["choices"]
        if "precision" in out:
            names = "[" + ", ".join(_names(out["choices"], out["precision"])) + "]"
        print(
            f"random resolution from {names} (seed {args.seed}) on {run.model} / "
            f"{run.dataset}, n={out['n']}: FLOPs drop {out['flops_drop_pct']:.2f} %{_time(out)}, "
            f"accuracy drop {out['acc_drop_pct']:.2f} points ({_ci(out)})"
        )
    return out


def budget(args: argparse.Namespace) -> Any:
    from ..choose.choices import Budget

    return Budget(args.max_drop, args.confidence, args.calib_frac, args.seed)


def run_select(args: argparse.Namespace) -> dict[str, Any]:
    from ..choose.choices import run_facts, select

    run = _run(args)
    if run is None:
        return {}
    found = select(run, budget(args), test=args.test, objective=args.objective)
    out = {**found.to_dict(), **run_facts(run)}
    if args.save:
        out.update(_save_policy(run, found, args))
    if not args.json:
        print(
            f"selected {_stage(out['resolution'], out.get('precision'))} for {run.model}: FLOPs "
            f"drop {out['flops_drop_pct']:.2f} %{_time(out)}, held-out accuracy drop "
            f"{out['acc_drop_pct']:.2f} points ({_ci(out)}); "
            f"calibration bound {out['calib_upper_bound']:.2f} <= {args.max_drop} at "
            f"{args.confidence:.0%} ({args.test}); {out['n_calib']} calibration / "
            f"{out['n_heldout']} held-out images"
        )
        if out["warning"]:
            print(f"warning: {out['warning']}")
    return out


def run_cascade(args: argparse.Namespace) -> dict[str, Any]:
    from ..choose.choices import cascade, cascade_headroom, run_facts

    run = _run(args)
    if run is None:
        return {}
    found = cascade(
        run, budget(args), signal=args.signal, max_len=args.max_len, objective=args.objective
    )
    out = {**found.to_dict(), **run_facts(run)}
    if args.save:
        out.update(_save_policy(run, found, args))
    if not args.json:
        names = _names(out["chain"], out.get("precision"))
        shares = ", ".join(f"{r}: {p:.1f} %" for r, p in zip(names, out["stage_share_pct"]))
        chain = out["chain"] if "precision" not in out else "[" + ", ".join(names) + "]"
        print(
            f"cascade {chain} "
            + (
                f"on {out['signal']} (thresholds {[round(t, 4) for t in out['thresholds']]})"
                if out["signal"]
                else "(one stage: nothing escalates)"
            )
            + f" for {run.model}: expected FLOPs "
            f"drop {out['flops_drop_pct']:.2f} %{_time(out)}, held-out accuracy drop "
            f"{out['acc_drop_pct']:.2f} points ({_ci(out)}); answered at {shares}"
        )
        if out["warning"]:
            print(f"warning: {out['warning']}")
    if args.headroom:
        out["headroom"] = cascade_headroom(run, budget(args), objective=args.objective)
        if not args.json:
            print(headroom_table(out["headroom"], args.max_drop, run.n))
    return out


def _save_policy(run: Any, found: Any, args: argparse.Namespace) -> dict[str, Any]:
    from ..ship.adaptive import save_choice

    saved = save_choice(run, found.to_dict(), budget(args), args.save)
    if not args.json:
        stages = ", ".join(
            f"{r} {kind}"
            + ("" if saved["stage_precision"][r] == "fp32" else f" {saved['stage_precision'][r]}")
            + (" with recalibrated BN" if saved["bn"][r] == "recalibrated" else "")
            for r, kind in saved["stage_state"].items()
        )
        print(f"policy written to {saved['policy_file']} (stages: {stages})")
    return saved


def headroom_table(rows: list[dict[str, Any]], max_drop: float, n: int) -> str:
    from ..records import SIGNALS

    timed = any("time_saved_pct" in row["perfect"] for row in rows)
    key, what = ("time_saved_pct", "time saved") if timed else ("flops_drop_pct", "FLOPs saved")
    head = " | ".join(f"{s}: AUROC, answered at r, {what}" for s in SIGNALS)
    lines = [
        f"\ntwo-stage chains [r, reference] within {max_drop} point(s), thresholds chosen in "
        f"hindsight on all {n} images (an upper bound, not a held-out figure):\n",
        f"| r | pass cost % | top-1 % | {head} | perfect ranking: answered at r, {what} |",
        "|---:|---:|---:|" + "---|" * (len(SIGNALS) + 1),
    ]
    for row in rows:
        cells = [
            f"{row[s]['auroc']:.3f}, {row[s]['accept_pct']:.1f} %, {row[s][key]:.1f} %"
            for s in SIGNALS
        ]
        perf = f"{row['perfect']['accept_pct']:.1f} %, {row['perfect'][key]:.1f} %"
        r = _names([row["resolution"]], [row.get("precision", "fp32")])[0]
        lines.append(
            f"| {r} | {row['stage_cost_pct']:.1f} | {row['top1']:.2f} | "
            + " | ".join(cells)
            + f" | {perf} |"
        )
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    from ..choose.choices import compare_header, compare_policies, run_facts
    from ..choose.compare import compare_table
    from ..pipeline import load_run

    add = {}
    for item in args.add:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ReswiseError(f"--add takes LABEL=RUN_DIR, got '{item}'")
        add[label] = load_run(path)
    run = _run(args)
    if run is None:
        return {}
    found = compare_policies(
        run,
        budget(args),
        max_len=args.max_len,
        add=add,
        out=run.directory,
        objective=args.objective,
    )
    out = {**found.to_dict(), **run_facts(run)}
    if not args.json:
        print(compare_header(run, out, budget(args)) + compare_table(out["rows"]))
        print(f"\nwritten: {run.directory}/compare.md, {run.directory}/compare.png")
    return out
