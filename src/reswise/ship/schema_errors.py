"""A JSON Schema error in words: the field as a reader would index it and what is wrong with
it, in one line (``thresholds[0] is NaN``), instead of jsonschema's repr."""

from __future__ import annotations

import json
import math
import re
from typing import Any

# the fix a refused policy file's message ends with: the file written by a choosing command, or
# the copy an export wrote
WRITE_AGAIN = "write it again with reswise cascade --from RUN --save POLICY.json"
EXPORT_AGAIN = "export it again with reswise export --policy POLICY.json --out DIR"


def where(path: Any) -> str:
    """``thresholds[0]``, ``weights.sha256``, ``bn["20"]``: a field as a reader would index it."""
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_]\w*", key):
            out += f".{key}" if out else key
        else:
            out += f"[{json.dumps(key)}]"
    return out or "the file"


_TYPES = {"array": "an array", "object": "an object", "integer": "an integer",
          "number": "a number", "string": "a string", "boolean": "true or false"}  # fmt: skip


def short(value: Any) -> str:
    text = json.dumps(value)  # NaN, Infinity, null, "abc": as the file spells them
    return text if len(text) <= 40 else text[:37] + "..."


def schema_problem(error: Any) -> tuple[str, str]:
    """(field, what is wrong with it) for a jsonschema error, in words rather than its repr."""
    path, value = list(error.absolute_path), error.instance
    kind, want = error.validator, error.validator_value
    if kind == "required":
        return where([*path, next(k for k in want if k not in value)]), "is missing"
    if kind == "additionalProperties":
        known = error.schema.get("properties", {})
        extra = next(k for k in value if k not in known)
        return where([*path, extra]), f"is not a field here (known: {', '.join(known)})"
    if kind == "type":
        names = " or ".join(_TYPES.get(n, n) for n in ([want] if isinstance(want, str) else want))
        return where(path), f"is {short(value)}, not {names}"
    if kind in ("enum", "const"):
        options = want if kind == "enum" else [want]
        return where(path), f"is {short(value)}, not one of {', '.join(map(short, options))}"
    if kind in ("minItems", "maxItems"):
        bound = "at least" if kind == "minItems" else "at most"
        why = f" ({_phrase(error)})" if _phrase(error) else ""
        return where(path), f"has {len(value)} item(s), {bound} {want} allowed{why}"
    if kind == "minProperties":
        return where(path), "is empty"
    limits = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in limits:
        return where(path), f"is {short(value)}, must be {limits[kind]} {want}"
    if kind == "pattern":  # under propertyNames the value checked is a key of the object
        key = "propertyNames" in error.absolute_schema_path
        what = f"has the key {short(value)}, not" if key else f"is {short(value)}, not"
        return where(path), f"{what} {_phrase(error) or 'of the form ' + want}"
    return where(path), f"is {short(value)}, which does not fit the schema ({kind})"


def _phrase(error: Any) -> str | None:
    """The schema's description when written as a phrase (lower case: "a sha256 digest ..."),
    which then words the refusal; capitalised descriptions document, too long for one line."""
    text = error.schema.get("description", "") if isinstance(error.schema, dict) else ""
    return text if text[:1].islower() else None


def non_finite(value: Any, path: list[Any]) -> tuple[str, str] | None:
    """The first NaN or infinity among the fields that decide what runs (the held-out and
    calibration figures are records: a NaN there is what was measured)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where(path), f"is {short(value)}"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        if path in ([], ["graphs"]) and k in ("heldout", "calibration", "check"):
            continue
        found = non_finite(v, [*path, k])
        if found is not None:
            return found
    return None
