"""Held-out top-1 after each epoch, at every training resolution with its own BN set."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data import Dataset
from ..models import LoadedModel
from .multires import PrivateBN
from .specialist import Specialists


def evaluate_multires(
    lm: LoadedModel,
    wrapper: PrivateBN | Specialists,
    data: Dataset,
    device: str = "cpu",
    resolutions: list[int] | None = None,
) -> dict[int, float]:
    """Test top-1 at ``resolutions`` (default: the native one and every private-BN one), each
    with its own BN set (or its own specialist)."""
    from ..measure.evaluate import sweep

    states = {r: {k: v.detach() for k, v in wrapper.overrides(r).items()} for r in wrapper.extra}
    res = resolutions or [wrapper.native, *wrapper.extra]
    rows = sweep(lm, data, res, bn_states=states, batch_size=256, device=device).rows
    return {row["resolution"]: row["top1"] for row in rows}


def evaluate_top1(
    lm: LoadedModel,
    data: Dataset,
    batch_size: int = 256,
    device: str = "cpu",
    resolution: int | None = None,
) -> float:
    """Test top-1 at ``resolution`` (default: the model's native one)."""
    from ..measure.evaluate import sweep

    r = resolution or lm.info.input_size
    return sweep(lm, data, [r], batch_size=batch_size, device=device).rows[0]["top1"]


def held_out(
    lm: LoadedModel, model: nn.Module, test: Dataset, resolutions: list[int], device: str
) -> Any:
    """Held-out top-1 at ``resolutions`` (a number when there is one); a :class:`PrivateBN`
    or :class:`Specialists` ``model`` is scored with each resolution's own state."""
    if isinstance(model, (PrivateBN, Specialists)):
        return evaluate_multires(lm, model, test, device=device, resolutions=resolutions)
    top = {r: evaluate_top1(lm, test, device=device, resolution=r) for r in resolutions}
    return top if len(top) > 1 else top[resolutions[0]]


def test_facts(test: Dataset | None) -> dict[str, Any]:
    """What each epoch's record says it was scored on (``test_set``): a resumed run may be
    given another --test-root, and its first epochs' figures then belong to the old one."""
    if test is None:
        return {}
    return {"test_set": {"name": test.name, "n": len(test), "fingerprint": test.fingerprint()[:16]}}


def other_test_sets(history: list[dict[str, Any]], now: dict[str, Any]) -> str:
    """A note naming the epochs of ``history`` scored on another test set than ``now``'s."""
    current = now.get("test_set", {}).get("fingerprint")
    by_set: dict[tuple[str, int], list[int]] = {}
    for rec in history:  # states saved before records named their test set: taken as is
        was = rec.get("test_set")
        if was and was["fingerprint"] != current:
            by_set.setdefault((was["name"], was["n"]), []).append(rec["epoch"])
    parts = [
        f"epoch{'s' if len(ep) > 1 else ''} {', '.join(map(str, ep))} "
        f"{'were' if len(ep) > 1 else 'was'} scored on {name} ({n} images)"
        for (name, n), ep in by_set.items()
    ]
    if not parts:
        return ""
    now_name = now["test_set"]["name"] if now else "no test set (no --test-root)"
    return "; ".join(parts) + f", not on {now_name}: the card marks them"
