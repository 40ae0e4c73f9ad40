"""Where a shipped cascade's time goes at one batch size: FLOPs saved vs time saved, split into
what the stages cost and what routing between them costs, per-stage sessions vs the fused graph.

    .venv/bin/python benchmarks/bench_cascade.py --policy p.json --data-root DIR \
        [--batch-size 64] [--rounds 7] [--threads 2]

Exports the policy, then on its held-out images, in full batches, interleaved round by round
(medians printed):
  fixed      the reference graph (fp32 at the native resolution) on every batch;
  stages     OnnxCascade: one session per stage, confidence and routing in numpy;
  fused      OnnxCascade(fused=True): cascade.onnx, one call per batch;
  compute    each stage's session alone on exactly the sub-batches the cascade hands it (what
             the stages cost with no routing at all): stages - compute = the routing's cost;
  ideal      each stage's time per image on full batches x the images it runs on: what the
             cascade would cost if small sub-batches ran as fast per image as full ones.
Time saved / FLOPs saved is the ratio the issue's 0.95 target is about. Nothing else should run
on the machine meanwhile; no assertion (speed is not a test).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from reswise.measure.doctor import cpu_name, has_vnni
from reswise.ship.adaptive import load_model_for
from reswise.ship.export import export_policy
from reswise.ship.latency import heldout_images
from reswise.ship.policy_file import load_policy
from reswise.ship.runtime import OnnxCascade


def sub_batches(runner: OnnxCascade, batches: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Per stage, the sub-batches the per-stage cascade runs it on: the chain climbs in
    resolution, so stage k ran on the images answered at stage k or later, in batch order."""
    answered_at = [runner(x)[1] for x in batches]
    return [
        [x[res >= r] for x, res in zip(batches, answered_at) if (res >= r).any()]
        for r in runner.chain
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    policy = load_policy(args.policy)
    lm = load_model_for(policy)
    images, _ = heldout_images(policy, args.data_root, lm)
    x, bs = images.numpy(), args.batch_size
    batches = [x[s : s + bs] for s in range(0, (len(x) // bs) * bs, bs)]
    with tempfile.TemporaryDirectory() as tmp:
        export_policy(policy["path"], tmp, lm=lm)
        stages = OnnxCascade(tmp, threads=args.threads)
        fused = OnnxCascade(tmp, threads=args.threads, fused=True)
        stages.reference(batches[0])  # load the reference session before timing
        subs = sub_batches(stages, batches)

        def compute() -> None:
            for sess, xs in zip(stages.sessions, subs):
                for b in xs:
                    sess.run(None, {"images": b})

        def full(k: int) -> Any:
            return lambda: [stages.sessions[k].run(None, {"images": b}) for b in batches]

        runs: dict[str, Any] = {
            "fixed": lambda: [stages.reference(b) for b in batches],
            "stages": lambda: [stages(b) for b in batches],
            "fused": lambda: [fused(b) for b in batches],
            "compute": compute,
            **{f"full_{k}": full(k) for k in range(len(stages.chain))},
        }
        for fn in runs.values():  # warm-up: allocation, kernel selection
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                times[name].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(batches) * bs
    escalated = [sum(len(b) for b in xs) for xs in subs]  # images each stage runs on
    answered = [a - b for a, b in zip(escalated, [*escalated[1:], 0])]
    ideal = sum(med[f"full_{k}"] / n * e for k, e in enumerate(escalated))
    flops = policy["flops"]
    ref = flops[str(policy["reference"])]
    flops_saved = 1 - sum(flops[str(r)] * e for r, e in zip(policy["chain"], escalated)) / (n * ref)
    prec = policy.get("precision") or ["fp32"] * len(policy["chain"])
    print(
        f"{policy['model']} cascade {policy['chain']} {prec} on {policy['signal']}, {n} held-out "
        f"images, batch {bs}, {args.threads} threads, {args.rounds} interleaved rounds (medians); "
        f"CPU {cpu_name()}, VNNI: {'yes' if has_vnni() else 'no'}"
    )
    print(f"images per stage (run / answered): {escalated} / {answered}")
    print(f"FLOPs saved: {100 * flops_saved:.1f} %")
    print("| pass | ms | time saved % | / FLOPs saved |")
    print("|---|---:|---:|---:|")
    rows = [
        ("fixed (reference)", med["fixed"]),
        ("ideal (stages at full-batch speed)", ideal),
        ("compute (stage sessions on the cascade's sub-batches)", med["compute"]),
        ("stages (OnnxCascade, numpy routing)", med["stages"]),
        ("fused (cascade.onnx)", med["fused"]),
    ]
    for name, ms in rows:
        saved = 1 - ms / med["fixed"]
        print(f"| {name} | {ms:.1f} | {100 * saved:.1f} | {saved / flops_saved:.3f} |")
    for k, r in enumerate(policy["chain"]):
        per = med[f"full_{k}"] / n
        print(
            f"stage {r}/{prec[k]}: {per * 1e3:.1f} us/image on full batches "
            f"({per / (med['fixed'] / n):.3f} of the reference's time, "
            f"{flops[str(r)] / ref:.3f} of its FLOPs)"
        )
    print(
        f"routing cost: stages - compute {med['stages'] - med['compute']:.1f} ms, "
        f"fused - compute {med['fused'] - med['compute']:.1f} ms"
    )


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


if __name__ == "__main__":
    main()
