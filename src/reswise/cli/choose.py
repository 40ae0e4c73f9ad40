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


FROM_HONOURS = {"resolutions", "reference", "seed", "json", "threads"}


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
    p.set_defaults(func=run_compare)


def _ci(d: dict[str, Any]) -> str:
    lo, hi = d["acc_drop_ci"]
    return f"95% CI {lo:.2f} .. {hi:.2f}"


def run_random(args: argparse.Namespace) -> dict[str, Any]:
    from ..choose.choices import random_choice
    from ..data import parse_resolutions

    weights = parse_floats(args.weights, "--weights") if args.weights else None
    run = records_source(args)
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
        print(
            f"random resolution from {out['choices']} (seed {args.seed}) on {run.model} / "
            f"{run.dataset}, n={out['n']}: FLOPs drop {out['flops_drop_pct']:.2f} %, "
            f"accuracy drop {out['acc_drop_pct']:.2f} points ({_ci(out)})"
        )
    return out


def budget(args: argparse.Namespace) -> Any:
    from ..choose.choices import Budget

    return Budget(args.max_drop, args.confidence, args.calib_frac, args.seed)


def run_select(args: argparse.Namespace) -> dict[str, Any]:
    from ..choose.choices import run_facts, select

    run = records_source(args)
    if run is None:
        return {}
    found = select(run, budget(args), test=args.test)
    out = {**found.to_dict(), **run_facts(run)}
    if args.save:
        out.update(_save_policy(run, found, args))
    if not args.json:
        r = out["resolution"]
        print(
            f"selected {r}x{r} for {run.model}: FLOPs drop {out['flops_drop_pct']:.2f} %, "
            f"held-out accuracy drop {out['acc_drop_pct']:.2f} points ({_ci(out)}); "
            f"calibration bound {out['calib_upper_bound']:.2f} <= {args.max_drop} at "
            f"{args.confidence:.0%} ({args.test}); {out['n_calib']} calibration / "
            f"{out['n_heldout']} held-out images"
        )
        if out["warning"]:
            print(f"warning: {out['warning']}")
    return out


def run_cascade(args: argparse.Namespace) -> dict[str, Any]:
    from ..choose.choices import cascade, cascade_headroom, run_facts

    run = records_source(args)
    if run is None:
        return {}
    found = cascade(run, budget(args), signal=args.signal, max_len=args.max_len)
    out = {**found.to_dict(), **run_facts(run)}
    if args.save:
        out.update(_save_policy(run, found, args))
    if not args.json:
        shares = ", ".join(f"{r}: {p:.1f} %" for r, p in zip(out["chain"], out["stage_share_pct"]))
        print(
            f"cascade {out['chain']} on {out['signal']} (thresholds "
            f"{[round(t, 4) for t in out['thresholds']]}) for {run.model}: expected FLOPs "
            f"drop {out['flops_drop_pct']:.2f} %, held-out accuracy drop "
            f"{out['acc_drop_pct']:.2f} points ({_ci(out)}); answered at {shares}"
        )
        if out["warning"]:
            print(f"warning: {out['warning']}")
    if args.headroom:
        out["headroom"] = cascade_headroom(run, budget(args))
        if not args.json:
            print(headroom_table(out["headroom"], args.max_drop, run.n))
    return out


def _save_policy(run: Any, found: Any, args: argparse.Namespace) -> dict[str, Any]:
    from ..ship.adaptive import save_choice

    saved = save_choice(run, found.to_dict(), budget(args), args.save)
    if not args.json:
        print(f"policy written to {saved['policy_file']} (BN per stage: {saved['bn']})")
    return saved


def headroom_table(rows: list[dict[str, Any]], max_drop: float, n: int) -> str:
    from ..records import SIGNALS

    head = " | ".join(f"{s}: AUROC, answered at r, FLOPs saved" for s in SIGNALS)
    lines = [
        f"\ntwo-stage chains [r, reference] within {max_drop} point(s), thresholds chosen in "
        f"hindsight on all {n} images (an upper bound, not a held-out figure):\n",
        f"| r | pass cost % | top-1 % | {head} | perfect ranking: answered at r, FLOPs saved |",
        "|---:|---:|---:|" + "---|" * (len(SIGNALS) + 1),
    ]
    for row in rows:
        cells = [
            f"{row[s]['auroc']:.3f}, {row[s]['accept_pct']:.1f} %, {row[s]['flops_drop_pct']:.1f} %"
            for s in SIGNALS
        ]
        perf = f"{row['perfect']['accept_pct']:.1f} %, {row['perfect']['flops_drop_pct']:.1f} %"
        lines.append(
            f"| {row['resolution']} | {row['stage_cost_pct']:.1f} | {row['top1']:.2f} | "
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
    run = records_source(args)
    if run is None:
        return {}
    found = compare_policies(run, budget(args), max_len=args.max_len, add=add, out=run.directory)
    out = {**found.to_dict(), **run_facts(run)}
    if not args.json:
        print(compare_header(run, out, budget(args)) + compare_table(out["rows"]))
        print(f"\nwritten: {run.directory}/compare.md, {run.directory}/compare.png")
    return out
