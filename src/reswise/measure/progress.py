"""Resumable progress of a sweep: written atomically as it goes, set aside when unreadable.

A run is resumed only when everything that decides its records is the same: the key hashes
the model, a digest of its weights, the images' fingerprint (which images, in which order,
with which labels), resolutions, preprocessing, batch size, device and thread count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..records import save_npz
from ..records.rundir import warn

FIELDS = ("topk_idx", "topk_prob", "entropy", "fwd")


def config_key(**kw: Any) -> str:
    return hashlib.sha1(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_digest(net: nn.Module) -> str:
    """The weights' values, not their file name: a retrained checkpoint never resumes an old run."""
    h = hashlib.sha1()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def weights_sha256(
    net: nn.Module, per_resolution: dict[int, dict[str, torch.Tensor]] | None = None
) -> str:
    """sha256 of the weights' values: the state_dict and any per-resolution state they carry.

    The definition a policy file checks weights by (``reswise.ship.adaptive.state_sha256``), so
    a run that records it can be matched to its policies without loading the weights again.
    Not :func:`weights_digest`: that one (sha1, no dtype or shape, no per-resolution state) keys
    progress files, and changing it would make every saved progress file unresumable.
    """
    h = hashlib.sha256()
    tensors = list(net.state_dict().items())
    for r in sorted(per_resolution or {}):
        tensors += [(f"reswise.bn.{r}.{k}", t) for k, t in sorted(per_resolution[r].items())]
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Progress:
    """The progress file of one sweep pass (``None`` path: no saving)."""

    def __init__(self, path: str | Path | None, key: str) -> None:
        self.path = Path(path) if path else None
        self.key = key
        self.failed = False

    def load(self) -> dict[str, Any] | None:
        """The saved state when it belongs to this configuration; None to start afresh."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as d:
                if str(d["key"]) != self.key:
                    return None  # another configuration: overwritten by this run
                state = {f: d[f] for f in FIELDS}
                state["done"] = int(d["done"])
            return state
        except Exception as e:  # zip, zlib and key errors all mean "not usable"
            aside = self.path.with_name(self.path.name + ".corrupt")
            self.path.replace(aside)
            warn(
                f"progress file {self.path} is unreadable ({e.__class__.__name__}); set aside "
                f"as {aside.name}, starting over"
            )
            return None

    def save(self, done: int, state: dict[str, Any]) -> None:
        """Atomic (temp + fsync + rename); a failed write is reported once and the run goes on."""
        if self.path is None:
            return
        arrays = {"key": np.array(self.key), "done": np.array(done)}
        arrays.update({f: state[f] for f in FIELDS})
        try:
            save_npz(self.path, arrays, compress=False)
        except OSError as e:
            if not self.failed:
                warn(
                    f"cannot save progress to {self.path} ({e.strerror or e}); the run goes on "
                    "in memory, but an interruption now would lose it"
                )
            self.failed = True
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
