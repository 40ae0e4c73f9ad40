"""What keeps a policy file and the graphs exported from it from disagreeing: standard library only.

A policy file's figures (held-out top-1, FLOPs saved) hold for the chain, thresholds, signal,
precisions, BN sources and FLOPs they were measured with. Hand-edit one of these and the file
claims what no longer runs: an edited threshold made the per-stage runner escalate every image
while the fused graph, its thresholds baked in, escalated 23.5 % and the file still quoted its
old top-1. So:

* ``seal``: each such field's sha256 (16 hex digits), written with the file
  (``save_policy``, ``export``) and checked on every load: an edit is refused naming the field.
* every graph ``export --policy`` writes carries those fields (ONNX metadata ``reswise.policy``),
  and each stage graph its resolution and precision (``reswise.stage``); the runtime compares
  them with policy.json, so a copy whose seal was removed is refused too. The graphs are
  themselves sha256-checked against policy.json: one edit cannot make both agree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..errors import ReswiseError
from .schema_errors import EXPORT_AGAIN, short, where

# the fields that decide what runs and what the file's figures are figures of
SEALED = ("chain", "thresholds", "signal", "precision", "bn", "reference", "flops", "heldout",
          "stage_state", "state_made")  # fmt: skip
POLICY_KEY, STAGE_KEY = "reswise.policy", "reswise.stage"  # ONNX metadata of exported graphs


def sealed_fields(policy: dict[str, Any]) -> dict[str, Any]:
    """The sealed fields' values (precision spelled out: absent means every stage fp32)."""
    out = {k: policy.get(k) for k in SEALED}
    out["precision"] = policy.get("precision") or ["fp32"] * len(policy["chain"])
    return out


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seal_of(policy: dict[str, Any]) -> dict[str, str]:
    """The ``seal`` field of ``policy``: per sealed field, the digest of its value."""
    return {k: _digest(v) for k, v in sealed_fields(policy).items()}


def check_seal(policy: dict[str, Any], source: str, fix: str) -> None:
    """Refuse, naming the field, a policy whose sealed fields changed since it was written; a
    file without a seal (written before seals) is taken as it is."""
    seal = policy.get("seal")
    if seal is None:
        return
    for field, digest in seal_of(policy).items():
        if seal.get(field) != digest:
            raise ReswiseError(
                f"{source}: {field} is not the value the file was written with (its seal "
                f"differs): edited by hand? Its figures hold only for what was measured; {fix}"
            )


def graph_metadata(policy: dict[str, Any], stage: tuple[int, str] | None) -> dict[str, str]:
    """The metadata an exported graph carries: the sealed fields, and for a stage graph its
    (resolution, precision)."""
    meta = {POLICY_KEY: json.dumps(sealed_fields(policy), sort_keys=True)}
    if stage is not None:
        meta[STAGE_KEY] = json.dumps({"resolution": stage[0], "precision": stage[1]})
    return meta


def first_difference(have: Any, want: Any, path: list[Any]) -> list[Any] | None:
    """Where ``have`` first differs from ``want``, as a field path (``[]``: at the top)."""
    if isinstance(have, dict) and isinstance(want, dict):
        for k in [*have, *(k for k in want if k not in have)]:  # SEALED's order: chain first
            found = first_difference(have.get(k), want.get(k), [*path, k])
            if found is not None:
                return found
        return None
    if isinstance(have, list) and isinstance(want, list) and len(have) == len(want):
        for i, (a, b) in enumerate(zip(have, want)):
            found = first_difference(a, b, [*path, i])
            if found is not None:
                return found
        return None
    return None if _digest(have) == _digest(want) else path


def check_graph(policy: dict[str, Any], meta: dict[str, str], graph: dict[str, Any]) -> None:
    """Refuse, naming the field, an exported graph (``graph``: its entry in policy.json) that
    was made for other policy fields than policy.json holds now, or for another stage than the
    one it is listed as."""
    source, (listed, stage) = policy.get("path", "policy.json"), _role(policy, graph)
    if POLICY_KEY not in meta:
        raise ReswiseError(
            f"{source}: {listed} ({graph['file']}) does not record the policy it was exported "
            f"for (exported by an earlier reswise); {EXPORT_AGAIN}"
        )
    made_for, now = json.loads(meta[POLICY_KEY]), sealed_fields(policy)
    diff = first_difference(now, made_for, [])
    if diff is not None:
        raise ReswiseError(
            f"{source}: {where(diff)} is {short(_at(now, diff))}, but the graphs were exported "
            f"for {short(_at(made_for, diff))} (edited by hand?); {EXPORT_AGAIN}"
        )
    want = None if stage is None else {"resolution": stage[0], "precision": stage[1]}
    if want is not None and json.loads(meta.get(STAGE_KEY, "null")) != want:
        raise ReswiseError(
            f"{source}: {listed} is {graph['file']}, the graph of another stage than "
            f"{stage[0]}/{stage[1]} ({meta.get(STAGE_KEY)}); {EXPORT_AGAIN}"
        )


def _role(policy: dict[str, Any], graph: dict[str, Any]) -> tuple[str, tuple[int, str] | None]:
    """Where policy.json lists ``graph``, and the (resolution, precision) it must run."""
    graphs, prec = policy["graphs"], sealed_fields(policy)["precision"]
    for i, entry in enumerate(graphs["stages"]):
        if entry is graph:
            return f"graphs.stages[{i}]", (int(policy["chain"][i]), prec[i])
    if graph is graphs["reference"]:
        return "graphs.reference", (int(policy["reference"]), "fp32")
    return "graphs.fused", None


def _at(value: Any, path: list[Any]) -> Any:
    for k in path:
        value = value.get(k) if isinstance(value, dict) else value[k]
    return value
