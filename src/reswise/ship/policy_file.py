"""The policy file: what a choosing command chose, written so it can be shipped; numpy only.

    reswise cascade --from runs/r20 --max-drop 1.0 --save policy.json

A JSON file (``FORMAT``) naming the model and its weights (with the sha256 of their values), the
preprocessing, the chain, signal and thresholds, where each stage's BatchNorm statistics come
from, the budget, the split and the images' fingerprint, and the held-out figures with their
CI. BN statistics recalibrated by the sweep (``--recalibrate-bn``) ride beside it in
``<name>.bn.npz``, whose sha256 the JSON holds. :class:`reswise.AdaptiveClassifier` and
``reswise export --policy`` build from it; ``reswise.runtime`` runs its export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..choose.policies import calib_heldout_split, run_cascade
from ..errors import ReswiseError
from ..records import (
    SIGNALS,
    Records,
    SweepResult,
    jsonable,
    save_npz,
    sha256_file,
    write_atomic,
)

FORMAT = "reswise-policy/1"
BN_SOURCES = ("shared", "weights", "recalibrated")  # model's own BN, weights' per-r BN, the sweep's


def chain_of(found: dict[str, Any]) -> tuple[list[int], list[float], str | None]:
    """Chain, thresholds and signal of a cascade or select result (select: one stage)."""
    if "chain" in found:
        return (
            [int(r) for r in found["chain"]],
            [float(t) for t in found["thresholds"]],
            found["signal"],
        )
    return [int(found["resolution"])], [], None


def build_policy(
    run: SweepResult,
    found: dict[str, Any],
    budget: dict[str, Any],
    *,
    weights: dict[str, Any],
    preprocessing: dict[str, Any],
    bn_source: dict[int, str],
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """The policy file's content for ``found`` (a cascade or select result's ``to_dict()``).

    ``weights``: name, how to load them (``pretrained`` tag or ``checkpoint`` path) and the
    sha256 of their values; ``preprocessing``: ResizePolicy fields plus mean, std and the
    native input size; ``bn_source``: per stage, one of ``BN_SOURCES``.
    """
    chain, thresholds, signal = chain_of(found)
    bad = [r for r in chain if bn_source.get(r) not in BN_SOURCES]
    if bad:
        raise ReswiseError(f"no BN source for stage {bad[0]}; one of {', '.join(BN_SOURCES)}")
    held = {
        k: found[k]
        for k in ("top1", "reference_top1", "acc_drop_pct", "acc_drop_ci", "flops_drop_pct")
    }
    shares = found.get("stage_share_pct", [100.0])
    n = run.n
    return {
        "format": FORMAT,
        "kind": "cascade" if "chain" in found else "select",
        "model": run.model,
        "weights": weights,
        "class_names": list(class_names) if class_names else None,
        "preprocessing": preprocessing,
        "chain": chain,
        "signal": signal,
        "thresholds": thresholds,
        "bn": {str(r): bn_source[r] for r in chain},
        "reference": int(run.reference),
        "flops": {str(r): int(run.flops[r]) for r in sorted({*chain, run.reference})},
        "budget": {k: budget[k] for k in ("max_drop", "confidence")},
        "split": {
            "seed": int(budget["seed"]),
            "calib_frac": float(budget["calib_frac"]),
            "n_calib": int(found["n_calib"]),
            "n_heldout": int(found["n_heldout"]),
        },
        "images": {
            "fingerprint": run.meta.get("images_fingerprint"),
            "n": int(n),
            "dataset": run.dataset,
            "dataset_kind": run.meta.get("dataset_kind"),
        },
        "heldout": {**held, "stage_share_pct": shares, "n": int(found["n_heldout"])},
        "heldout_resize": "the sweep's: " + run.policy,
        "calibration": {k: found[k] for k in ("calib_upper_bound", "calib_drop_pct") if k in found},
        "run": run.directory,
    }


def check_policy(policy: Any, source: str) -> dict[str, Any]:
    """A policy dict that says what every consumer reads, or a one-line error naming the file."""
    need = ("format", "model", "weights", "preprocessing", "chain", "thresholds", "bn", "flops")
    if not isinstance(policy, dict) or policy.get("format") != FORMAT:
        raise ReswiseError(
            f"{source} is not a reswise policy file ({FORMAT}); write one with "
            "reswise cascade --from RUN --save POLICY.json"
        )
    missing = [k for k in need if k not in policy]
    chain = policy.get("chain") or []
    if missing or not chain or len(policy["thresholds"]) != len(chain) - 1:
        what = (
            f"lacks '{missing[0]}'" if missing else "has a chain that does not fit its thresholds"
        )
        raise ReswiseError(f"policy file {source} {what}; write it again with --save")
    if len(chain) > 1 and policy.get("signal") not in SIGNALS:
        raise ReswiseError(f"policy file {source} names no known confidence signal; write it again")
    return policy


def save_policy(
    policy: dict[str, Any],
    path: str | Path,
    bn_states: dict[int, dict[str, np.ndarray]] | None = None,
) -> Path:
    """Write ``path`` (JSON) and, when stages use recalibrated BN, ``<stem>.bn.npz`` beside it."""
    path = Path(path)
    if path.is_dir():
        raise ReswiseError(f"--save {path} is a folder; give the path of the .json file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    policy = check_policy(dict(policy), str(path))
    used = [int(r) for r, s in policy["bn"].items() if s == "recalibrated"]
    if used:
        missing = [r for r in used if r not in (bn_states or {})]
        if missing:
            raise ReswiseError(
                f"stage {missing[0]} uses recalibrated BN statistics the run did not keep; "
                "rerun the sweep with --recalibrate-bn so it saves them"
            )
        npz = path.with_name(path.stem + ".bn.npz")
        flat = {f"{r}/{k}": v for r in used for k, v in bn_states[r].items()}
        save_npz(npz, flat, compress=False)
        policy["bn_file"] = {"name": npz.name, "sha256": sha256_file(npz)}
    else:
        policy["bn_file"] = None
    write_atomic(path, (json.dumps(policy, indent=1, default=jsonable) + "\n").encode())
    return path


def load_policy(path: str | Path) -> dict[str, Any]:
    """A policy file, checked; ``policy["path"]`` says where it was read from."""
    path = Path(path)
    if not path.is_file():
        raise ReswiseError(f"policy file {path} does not exist; write one with --save")
    try:
        policy = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReswiseError(f"{path} is not JSON; write the policy again with --save") from None
    policy = check_policy(policy, str(path))
    policy["path"] = str(path)
    return policy


def load_bn_states(policy: dict[str, Any]) -> dict[int, dict[str, np.ndarray]]:
    """The recalibrated BN statistics the policy's stages use (checked against their sha256)."""
    info = policy.get("bn_file")
    if not info:
        return {}
    npz = Path(policy.get("path", ".")).with_name(info["name"])
    if not npz.is_file() or sha256_file(npz) != info["sha256"]:
        raise ReswiseError(
            f"BN statistics {npz} are missing or changed since the policy was written; keep "
            "them beside the policy file, or write it again with --save"
        )
    states: dict[int, dict[str, np.ndarray]] = {}
    with np.load(npz, allow_pickle=False) as d:
        for key in d.files:
            r, _, name = key.partition("/")
            states.setdefault(int(r), {})[name] = d[key]
    return states


def heldout_positions(policy: dict[str, Any]) -> np.ndarray:
    """Positions (in the swept images' order) of the images the policy's figures come from."""
    split = policy["split"]
    return calib_heldout_split(policy["images"]["n"], split["calib_frac"], split["seed"])[1]


def simulate(policy: dict[str, Any], records: Records) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``records``: the class the records-based cascade predicts and the resolution
    that answered, by :func:`reswise.choose.policies.cascade.run_cascade` itself."""
    chain, thresholds = policy["chain"], policy["thresholds"]
    flops = {int(r): f for r, f in policy["flops"].items()}
    _, _, stage = run_cascade(records, flops, chain, thresholds, policy["signal"] or "max_softmax")
    rows = np.array([records.row(r) for r in chain])[stage]
    pred = records.topk_idx[rows, np.arange(len(stage)), 0].astype(np.int64)
    return pred, np.asarray(chain)[stage]


def measured(
    policy: dict[str, Any], logits: np.ndarray, resolution: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Top-1, share answered per stage and FLOPs saved of a cascade's answers on real images."""
    chain, flops, ref = policy["chain"], policy["flops"], str(policy["reference"])
    n = len(labels)
    reached = [np.sum(resolution >= r) for r in chain]  # an image pays every stage up to its own
    mean_flops = sum(k * flops[str(r)] for k, r in zip(reached, chain)) / max(n, 1)
    return {
        "n": int(n),
        "top1": float(100.0 * np.mean(np.argmax(logits, 1) == labels)) if n else float("nan"),
        "stage_share_pct": [float(100.0 * np.mean(resolution == r)) for r in chain],
        "flops_drop_pct": float(100.0 * (1.0 - mean_flops / flops[ref])),
    }
