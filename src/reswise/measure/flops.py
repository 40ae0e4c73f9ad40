"""Exact FLOP counts per resolution, fvcore-style, on PyTorch's own ``torch.utils.flop_counter``.

What counts: the operators PyTorch's counter knows -- convolutions (grouped and depthwise
included), matrix multiplies (``mm``, ``addmm``, ``bmm``, ``baddbmm``) and attention -- at 2 FLOPs
per multiply-accumulate, so ``macs = flops / 2``. Elementwise work (BatchNorm, activations,
additions, pooling, resizing) is not counted, as in most CNN papers; in inference BN folds into
the preceding convolution anyway.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ReswiseError


@dataclass
class FlopAnalysis:
    """Lazy analysis of one model at one input size: ``total()``, ``by_module()``, ``by_operator()``."""

    model: nn.Module
    resolution: int
    channels: int = 3

    @cached_property
    def _counts(self) -> dict[str, dict[str, int]]:
        was_training = self.model.training
        self.model.eval()
        # the probe goes where the weights are, so a model already on a GPU is counted there
        dev = next((t.device for t in self.model.parameters()), torch.device("cpu"))
        x = torch.zeros(1, self.channels, self.resolution, self.resolution, device=dev)
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                self.model(x)
        except (RuntimeError, ValueError) as e:
            raise ReswiseError(
                f"the network cannot take {self.resolution}x{self.resolution} inputs "
                f"({str(e).splitlines()[0][:100]}); use a larger resolution"
            ) from None
        finally:
            self.model.train(was_training)
        return {
            m: {str(op).split(".")[-1]: int(n) for op, n in ops.items()}
            for m, ops in fc.get_flop_counts().items()
        }

    def total(self) -> int:
        return sum(self._counts.get("Global", {}).values())

    def macs(self) -> int:
        return self.total() // 2

    def by_operator(self) -> dict[str, int]:
        return dict(self._counts.get("Global", {}))

    def by_module(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for name, ops in self._counts.items():
            if name != "Global":  # the counter prefixes the root's class name; fvcore uses ""
                out[name.split(".", 1)[1] if "." in name else ""] += sum(ops.values())
        return dict(out)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_table(
    model: nn.Module, resolutions: list[int], reference: int | None = None
) -> list[dict[str, float | int]]:
    """One row per resolution: macs, flops, params, flops_drop_pct against ``reference``."""
    reference = reference if reference is not None else max(resolutions)
    res = list(dict.fromkeys([reference, *resolutions]))
    totals = {r: FlopAnalysis(model, r).total() for r in res}
    params = count_params(model)
    return [
        {
            "resolution": r,
            "flops": totals[r],
            "macs": totals[r] // 2,
            "params": params,
            "flops_drop_pct": 100.0 * (1.0 - totals[r] / totals[reference]),
        }
        for r in resolutions
    ]
