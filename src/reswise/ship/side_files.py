"""The files that travel beside a policy file, each checked against the sha256 the policy holds:
the recalibrated BN statistics (``<stem>.bn.npz``) and the int8 stages' quantization parameters
(``<stem>.quant.json``). Numpy only."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReswiseError
from ..records import sha256_file
from .schema_errors import WRITE_AGAIN

QUANT_FORMAT = "reswise-quant/1"


def beside(policy: dict[str, Any], info: dict[str, str], what: str) -> Path:
    """A file that travels beside the policy (``info``: its name and sha256), checked unchanged."""
    path = Path(policy.get("path", ".")).with_name(info["name"])
    if not path.is_file() or sha256_file(path) != info["sha256"]:
        raise ReswiseError(
            f"{what} {path} are missing or changed since the policy was written; keep them "
            "beside the policy file, or write it again with --save"
        )
    return path


def load_quant(policy: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The int8 stages' quantization parameters (settings, ranges, graph sha256), checked
    against the sha256 the policy holds; {} when no stage is int8."""
    chain, prec = policy["chain"], policy.get("precision") or []
    int8 = [int(r) for r, q in zip(chain, prec) if q == "int8"]
    info = policy.get("quant_file")
    if not int8:
        return {}
    qfile = beside(policy, info, "quantization parameters")
    stages = _quant_stages(qfile)
    if sorted(stages) != sorted(int8):
        raise ReswiseError(
            f"{policy.get('path', 'the policy')}: precision runs {sorted(int8)} at int8, but "
            f"{qfile.name} holds the int8 stages {sorted(stages)} the figures were measured "
            f"with (precision edited by hand?); {WRITE_AGAIN}"
        )
    return stages


def _quant_stages(qfile: Path) -> dict[int, dict[str, Any]]:
    """The stages of a quantization file, each with its settings, ranges and graph sha256."""
    try:
        body = json.loads(qfile.read_text())
        stages = {int(r): s for r, s in body["stages"].items()}
        for s in stages.values():
            s["settings"], s["ranges"], s["graph_sha256"]  # noqa: B018 (a missing key is a KeyError)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ReswiseError(f"{qfile} is not a reswise quantization file; {WRITE_AGAIN}") from None
    if body.get("format") != QUANT_FORMAT:
        raise ReswiseError(f"{qfile} is not a {QUANT_FORMAT} file; {WRITE_AGAIN}")
    return stages


def load_bn_states(policy: dict[str, Any]) -> dict[int, dict[str, np.ndarray]]:
    """The recalibrated BN statistics the policy's stages use (checked against their sha256, and
    to hold the same tensors for exactly those stages)."""
    used = sorted(int(r) for r, s in policy["bn"].items() if s == "recalibrated")
    info = policy.get("bn_file")
    if not info:
        if used:
            raise ReswiseError(
                f"stage {used[0]} uses recalibrated BN statistics but the policy names no "
                f"bn_file; {WRITE_AGAIN}"
            )
        return {}
    npz = beside(policy, info, "BN statistics")
    try:
        with np.load(npz, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ReswiseError(
            f"{npz} is not a BN statistics file ({e.__class__.__name__}); {WRITE_AGAIN}"
        ) from None
    return _bn_by_stage(arrays, used, npz)


def _bn_by_stage(
    arrays: dict[str, np.ndarray], used: list[int], npz: Path
) -> dict[int, dict[str, np.ndarray]]:
    """``<r>/<tensor>`` arrays per stage; refused unless they are for exactly the ``used`` stages
    and each stage holds the same tensors (the model loads them leniently: a tensor missing for
    one stage would quietly keep the shared statistics there)."""
    states: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        r, _, name = key.partition("/")
        if not re.fullmatch(r"[1-9][0-9]*", r) or not name:
            raise ReswiseError(
                f"{npz} holds '{key}', not a '<resolution>/<tensor>' key; {WRITE_AGAIN}"
            )
        states.setdefault(int(r), {})[name] = value
    if sorted(states) != used:
        raise ReswiseError(
            f"{npz} holds BN statistics for {sorted(states)}, but the stages on recalibrated BN "
            f"are {used}; {WRITE_AGAIN}"
        )
    for r in used:
        odd = sorted(set(states[r]) ^ set(states[used[0]]))
        if odd:
            raise ReswiseError(f"{npz}: stages {used[0]} and {r} differ in {odd[0]}; {WRITE_AGAIN}")
    return states
