"""The policy file: what a choosing command chose, written so it can be shipped; numpy only.

    reswise cascade --from runs/r20 --max-drop 1.0 --save policy.json

A JSON file (``FORMAT``) naming the model and its weights (with the sha256 of their values), the
preprocessing, the chain, signal and thresholds, where each stage's BatchNorm statistics come
from, the budget, the split and the images' fingerprint, and the held-out figures with their
CI. BN statistics recalibrated by the sweep (``--recalibrate-bn``) ride beside it in
``<name>.bn.npz``, whose sha256 the JSON holds. :class:`reswise.AdaptiveClassifier` and
``reswise export --policy`` build from it; ``reswise.runtime`` runs its export.

Every load and save is checked (:func:`check_policy`) against one schema, ``policy.schema.json``
beside this module (JSON Schema draft 2020-12, published in the docs too), plus the few rules a
schema cannot state. The check uses ``jsonschema``, not pydantic models: it imports no torch, so
the torch-free ``reswise.runtime`` checks its exported copy with the same code, and the format is
a published file any tool in any language can validate a policy with, not a Python class.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
from importlib import resources
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
    unstage,
    write_atomic,
)
from ..records import stage as stage_key
from .schema_errors import EXPORT_AGAIN, WRITE_AGAIN, non_finite, schema_problem, where
from .seal import check_seal, seal_of
from .side_files import QUANT_FORMAT, beside, load_bn_states, load_quant  # noqa: F401 (their old home)

VERSION = 1
FORMAT = f"reswise-policy/{VERSION}"
SCHEMA_FILE = "policy.schema.json"  # beside this module; docs/policy.schema.json is a copy
# ONNX Runtime's CPU provider has no bf16 arithmetic: a bf16 stage is swept, not shipped
SHIPPED_PRECISIONS = ("fp32", "int8")
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


def precision_of(found: dict[str, Any]) -> list[str]:
    """Per stage of a cascade or select result, its precision (results before precisions: fp32)."""
    chain = chain_of(found)[0]
    prec = found.get("precision")
    if prec is None:
        return ["fp32"] * len(chain)
    prec = [prec] if isinstance(prec, str) else list(prec)
    bad = [q for q in prec if q not in SHIPPED_PRECISIONS]
    if bad:
        raise ReswiseError(
            f"a {bad[0]} stage cannot be shipped (ONNX Runtime's CPU provider has no {bad[0]} "
            "arithmetic); choose with --precision fp32,int8"
        )
    return prec


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
    prec = precision_of(found)
    bad = [r for r in chain if bn_source.get(r) not in BN_SOURCES]
    if bad:
        raise ReswiseError(f"no BN source for stage {bad[0]}; one of {', '.join(BN_SOURCES)}")
    held = {
        k: found[k]
        for k in ("top1", "reference_top1", "acc_drop_pct", "acc_drop_ci", "flops_drop_pct")
    }
    shares = found.get("stage_share_pct", [100.0])
    n = run.n
    flops_at = {unstage(k)[0]: v for k, v in run.flops.items()}
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
        # a precision changes the time, not the FLOPs: any stage at r says r's FLOPs (a run seen
        # through --precision int8 keeps no fp32 stage below the reference)
        "flops": {str(r): int(flops_at[r]) for r in sorted({*chain, run.reference})},
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
            # absolute when it is a folder found from here: export checks on these images
            "dataset": str(Path(run.dataset).resolve())
            if Path(run.dataset).is_dir()
            else run.dataset,
            "dataset_kind": run.meta.get("dataset_kind"),
            "limit": run.meta.get("images_limit"),  # the sweep's --limit subset, drawn with
            "seed": run.meta.get("images_seed"),  # its --seed (the split may use another)
        },
        "heldout": {**held, "stage_share_pct": shares, "n": int(found["n_heldout"])},
        "heldout_resize": "the sweep's: " + run.policy,
        "calibration": {k: found[k] for k in ("calib_upper_bound", "calib_drop_pct") if k in found},
        "run": run.directory,
        # written only when they say something: files without them read as fp32 / FLOPs
        **({"precision": prec} if set(prec) != {"fp32"} else {}),
        **(
            {"objective": "time", "timed_on": found.get("timed_on")}
            if found.get("objective") == "time"
            else {}
        ),
    }


def policy_schema() -> dict[str, Any]:
    """The policy file's JSON Schema (draft 2020-12), as shipped in the package."""
    return json.loads(json.dumps(_schema()))  # a copy: the cached one stays as shipped


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text())


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema  # on the first check, not on import: most imports of this module check none

    base = jsonschema.Draft202012Validator
    # JSON Schema counts 20.0 as an integer, but the stages are found by the key "20", not "20.0"
    types = base.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool)
    )
    return jsonschema.validators.extend(base, type_checker=types)(_schema())


def check_policy(policy: Any, source: str, *, exported: bool = False) -> dict[str, Any]:
    """``policy`` if it is a whole, consistent policy file, else a one-line ``ReswiseError``
    naming ``source`` and the field. ``exported``: the copy ``reswise export`` writes, which must
    list its graphs."""
    fmt = policy.get("format") if isinstance(policy, dict) else None
    version = re.fullmatch(r"reswise-policy/([0-9]+)", fmt) if isinstance(fmt, str) else None
    if version and int(version.group(1)) > VERSION:
        raise ReswiseError(
            f"{source} is a {fmt} file, written by a newer reswise; upgrade reswise to read it"
        )
    if fmt != FORMAT:
        raise ReswiseError(
            f"{source} is not a reswise policy file ({FORMAT}); write one with "
            "reswise cascade --from RUN --save POLICY.json"
        )
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(policy))
    found = schema_problem(error) if error is not None else _rule_problem(policy, exported)
    if found:
        fix = EXPORT_AGAIN if exported else WRITE_AGAIN
        raise ReswiseError(f"{source}: {found[0]} {found[1]}; {fix}")
    return policy


def _rule_problem(p: dict[str, Any], exported: bool) -> tuple[str, str] | None:
    """The rules the schema cannot state: how fields agree with each other, and finite numbers
    (``json.loads`` reads NaN and Infinity, and they pass every numeric bound)."""
    chain, keys = p["chain"], [str(r) for r in p["chain"]]
    if len(p["thresholds"]) != len(chain) - 1:
        return "thresholds", (
            f"has {len(p['thresholds'])} values for {len(chain)} stages; a cascade has one "
            "threshold fewer than stages"
        )
    nan = non_finite(p, [])
    if nan is not None:
        return nan
    prec = p.get("precision") or ["fp32"] * len(chain)
    if len(prec) != len(chain):
        return "precision", f"has {len(prec)} entries for {len(chain)} stages"
    if any(b <= a for a, b in zip(chain, chain[1:])):
        return "chain", f"is {chain}, not strictly ascending (stages run cheapest first)"
    int8 = [k for k, q in zip(keys, prec) if q == "int8"]
    if int8 and p.get("quant_file") is None:
        return "quant_file", f"is missing or null, but stage {int8[0]} runs int8"
    if not int8 and p.get("quant_file") is not None:
        return "precision", (
            f"names no int8 stage, but quant_file {p['quant_file'].get('name')} holds the "
            "int8 stages the file's figures were measured with (precision edited by hand?)"
        )
    recal_int8 = [k for k in int8 if p["bn"].get(k) == "recalibrated"]
    if recal_int8:
        return where(["bn", recal_int8[0]]), (
            "is recalibrated, but int8 stages were measured with the weights' own BN"
        )
    for k in keys:
        if k not in p["bn"]:
            return where(["bn", k]), "is missing: every stage names its BN source"
    for k in p["bn"]:
        if k not in keys:
            return where(["bn", k]), f"names no stage of the chain {chain}"
    for k, role in [*((k, "stage") for k in keys), (str(p["reference"]), "the reference")]:
        if k not in p["flops"]:
            return where(["flops", k]), f"is missing (the FLOPs of {role} {k})"
    if len(chain) > 1 and p["signal"] is None:
        return "signal", f"is null; a cascade of {len(chain)} stages needs {', '.join(SIGNALS)}"
    recal = [k for k in keys if p["bn"][k] == "recalibrated"]
    if recal and p["bn_file"] is None:
        return "bn_file", f"is null, but stage {recal[0]} uses recalibrated BN statistics"
    return _graphs_problem(p, exported)


def _graphs_problem(p: dict[str, Any], exported: bool) -> tuple[str, str] | None:
    graphs = p.get("graphs")
    if graphs is None:
        return ("graphs", "is missing (an exported copy lists its graphs)") if exported else None
    n, stages = len(p["chain"]), graphs["stages"]
    if len(stages) != n:
        return "graphs.stages", f"has {len(stages)} graphs for {n} stages"
    size = p["preprocessing"]["input_size"]
    if graphs["input"]["size"] != [size, size]:
        return "graphs.input.size", (
            f"is {graphs['input']['size']}, not [{size}, {size}] (preprocessing.input_size)"
        )
    return None


def save_policy(
    policy: dict[str, Any],
    path: str | Path,
    bn_states: dict[int, dict[str, np.ndarray]] | None = None,
    quant: dict[int, dict[str, Any]] | None = None,
) -> Path:
    """Write ``path`` (JSON) and, when stages use recalibrated BN, ``<stem>.bn.npz`` beside it,
    and when stages run int8, ``<stem>.quant.json`` (``quant``: per resolution, the settings,
    the calibrated ranges and the int8 graph's sha256); the policy is checked before any is
    written."""
    path = Path(path)
    if path.is_dir():
        raise ReswiseError(f"--save {path} is a folder; give the path of the .json file to write")
    npz = path.with_name(path.stem + ".bn.npz")
    qfile = path.with_name(path.stem + ".quant.json")
    policy = {k: v for k, v in policy.items() if k != "path"}  # where it was read from, if loaded
    bn = policy.get("bn")
    recal = isinstance(bn, dict) and "recalibrated" in bn.values()
    int8 = [
        int(r)
        for r, q in zip(policy.get("chain", []), policy.get("precision") or [])
        if q == "int8"
    ]
    # the files' sha256 is known once their bytes are: the check sees entries of the same shape
    planned = {"name": npz.name, "sha256": "0" * 64} if recal else None
    planned_q = {"name": qfile.name, "sha256": "0" * 64} if int8 else None
    policy = {**policy, "bn_file": planned, **({"quant_file": planned_q} if int8 else {})}
    policy = check_policy(policy, str(path))
    missing_q = [r for r in int8 if r not in (quant or {})]
    if missing_q:
        raise ReswiseError(
            f"stage {missing_q[0]} runs int8 but the run kept no quantization parameters for it; "
            "rerun the sweep with --precision fp32,int8"
        )
    used = [int(r) for r, s in policy["bn"].items() if s == "recalibrated"]
    missing = [r for r in used if r not in (bn_states or {})]
    if missing:
        raise ReswiseError(
            f"stage {missing[0]} uses recalibrated BN statistics the run did not keep; "
            "rerun the sweep with --recalibrate-bn so it saves them"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if used:
        buf = io.BytesIO()
        np.savez(buf, **{f"{r}/{k}": v for r in used for k, v in bn_states[r].items()})
        policy["bn_file"] = {"name": npz.name, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
        write_atomic(npz, buf.getvalue())
    if int8:
        body = {"format": QUANT_FORMAT, "stages": {str(r): quant[r] for r in int8}}
        data = (json.dumps(body, indent=1, default=jsonable) + "\n").encode()
        policy["quant_file"] = {"name": qfile.name, "sha256": hashlib.sha256(data).hexdigest()}
        write_atomic(qfile, data)
    policy = json.loads(json.dumps(policy, default=jsonable))  # the values as read back
    policy["seal"] = seal_of(policy)  # a later hand edit of what the figures hold for is refused
    write_atomic(path, (json.dumps(policy, indent=1) + "\n").encode())
    return path


def load_policy(path: str | Path, *, exported: bool = False) -> dict[str, Any]:
    """A policy file, checked (:func:`check_policy`); ``policy["path"]`` says where it was read
    from. ``exported``: the copy in a ``reswise export`` folder, which lists its graphs."""
    path = Path(path)
    if not path.is_file():
        raise ReswiseError(f"policy file {path} does not exist; write one with --save")
    try:
        policy = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        fix = EXPORT_AGAIN if exported else WRITE_AGAIN
        raise ReswiseError(f"{path} is not JSON; {fix}") from None
    policy = check_policy(policy, str(path), exported=exported)
    check_seal(policy, str(path), EXPORT_AGAIN if exported else WRITE_AGAIN)
    policy["path"] = str(path)
    return policy


def heldout_positions(policy: dict[str, Any]) -> np.ndarray:
    """Positions (in the swept images' order) of the images the policy's figures come from."""
    split = policy["split"]
    return calib_heldout_split(policy["images"]["n"], split["calib_frac"], split["seed"])[1]


def simulate(policy: dict[str, Any], records: Records) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``records``: the class the records-based cascade predicts and the resolution
    that answered, by :func:`reswise.choose.policies.cascade.run_cascade` itself."""
    chain, thresholds = policy["chain"], policy["thresholds"]
    keys = [
        stage_key(r, p) for r, p in zip(chain, policy.get("precision") or ["fp32"] * len(chain))
    ]
    flops = {k: policy["flops"][str(unstage(k)[0])] for k in keys}
    _, _, stage = run_cascade(records, flops, keys, thresholds, policy["signal"] or "max_softmax")
    rows = np.array([records.row(k) for k in keys])[stage]
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
