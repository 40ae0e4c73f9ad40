"""Stage keys: a row of the records is a resolution, or a (resolution, precision) pair.

fp32 stages keep the plain int key, so every run and every caller from before precisions reads
the same; ``(32, "int8")`` names an int8 stage. Chains climb in :func:`stage_order`.
"""

from __future__ import annotations

from ..errors import ReswiseError

# Numeric precisions a stage can run at, cheapest first: the order chains climb in at one
# resolution. fp32 stages keep the plain int key (every run before precisions had only those).
PRECISIONS = ("int8", "bf16", "fp32")
Stage = int | tuple[int, str]  # a resolution (fp32) or (resolution, precision)


def stage(resolution: int, precision: str = "fp32") -> Stage:
    """The key of a (resolution, precision) row: the int itself for fp32."""
    if precision not in PRECISIONS:
        raise ReswiseError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
    return int(resolution) if precision == "fp32" else (int(resolution), precision)


def unstage(key: Stage) -> tuple[int, str]:
    """(resolution, precision) of a stage key."""
    return (int(key[0]), str(key[1])) if isinstance(key, tuple) else (int(key), "fp32")


def stage_order(key: Stage) -> tuple[int, int]:
    """Chains climb in resolution, and at one resolution from int8 up to fp32."""
    r, p = unstage(key)
    return r, PRECISIONS.index(p)


def stage_name(key: Stage) -> str:
    """``32`` for fp32, ``32/int8`` otherwise: how reports and the CLI spell a stage."""
    r, p = unstage(key)
    return str(r) if p == "fp32" else f"{r}/{p}"


def parse_stage(text: str | int) -> Stage:
    """``"32"`` or ``"32/int8"`` (the CLI's spelling) to a stage key."""
    r, _, p = str(text).strip().partition("/")
    try:
        return stage(int(r), p or "fp32")
    except ValueError:
        raise ReswiseError(
            f"'{text}' is not a stage; write a resolution like 32 or 32/int8"
        ) from None
