"""A training run's resumable state, saved after every epoch and when it is stopped mid-epoch.

The state holds everything the next step depends on: model, optimiser, the CPU generator that
draws augmentation and sandwich resolutions, torch's global RNG, and the position in the epoch
(step, the epoch's image order, the loss summed so far). Ctrl-C or SIGTERM while a step runs
are held until the step ends (:class:`StopAtStepEnd`), so the saved state is always a step
boundary and the rerun continues bit for bit; a second signal stops at once, losing only the
steps since the last save.
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from ..records import replacing

# fields added after runs were saved, with the value those runs used (not today's default)
_LEGACY = {"sandwich_k": None}


def same_config(saved: str, cfg: Any) -> bool:
    """Whether a state saved with config JSON ``saved`` belongs to a run with ``cfg``."""
    # fields added to the config after a run started take their defaults, so it still resumes
    as_json = lambda c: json.loads(json.dumps(asdict(c)))  # noqa: E731 - tuples become lists
    return {**as_json(type(cfg)()), **_LEGACY, **json.loads(saved)} == as_json(cfg)


class StopAtStepEnd:
    """Holds Ctrl-C and SIGTERM until the running step ends (``asked`` counts them); a second
    one raises KeyboardInterrupt at once. Signals are the main thread's only: elsewhere it does
    nothing and an interrupt arrives as usual."""

    def __init__(self) -> None:
        self.asked = 0
        self._before: dict[int, Any] = {}

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.asked += 1
        if self.asked > 1:
            raise KeyboardInterrupt

    def __enter__(self) -> StopAtStepEnd:
        if threading.current_thread() is threading.main_thread():
            self._before = {
                s: signal.signal(s, self._hold) for s in (signal.SIGINT, signal.SIGTERM)
            }
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._before.items():
            signal.signal(s, h)
        self._before = {}


class RunState:
    """Model, optimiser, generator, history and position of one run; ``rank`` 0 writes."""

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        g: torch.Generator,
        cfg: Any,
        path: Path,
        rank: int = 0,
        key: dict[str, str] | None = None,
    ) -> None:
        self.model, self.opt, self.g, self.cfg, self.path = model, opt, g, cfg, path
        self.rank = rank
        # what defines the run beyond its config (fingerprints of the images and of the
        # starting weights): a state saved with another key belongs to another run
        self.key = key or {}
        self.epoch, self.wall = 0, 0.0  # epochs finished, training seconds so far
        self.history: list[dict[str, Any]] = []
        self._clear_epoch()

    def _clear_epoch(self) -> None:
        # inside an unfinished epoch: steps taken, its image order, and each rank's summed loss
        # and images so far
        self.step, self.perm = 0, torch.zeros(0, dtype=torch.long)
        self.loss_sums: list[float] = []
        self.seens: list[int] = []

    def resume(self, log: Any, out: Path) -> None:
        if not self.path.is_file():
            return
        st = torch.load(self.path, map_location="cpu", weights_only=True)
        if not same_config(st["config"], self.cfg):
            log(f"{self.path} was made with another config; starting afresh")
            return
        other = _other(json.loads(st.get("key", "{}")), self.key)
        if other:
            log(f"{self.path} was made on {other}; starting afresh")
            return
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.g.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        self.epoch, self.wall = int(st["epoch"]), float(st["wall_s"])
        self.history = [_int_keys(rec) for rec in json.loads(st["history"])]
        self.step = int(st.get("step", 0))  # states saved before mid-epoch stops: epoch ends
        self.perm = st.get("perm", self.perm)
        self.loss_sums = json.loads(st.get("loss_sums", "[]"))
        self.seens = json.loads(st.get("seens", "[]"))
        at = f", step {self.step}" if self.step else ""
        log(f"resuming {out} from epoch {self.epoch}{at}")

    def save(self) -> None:
        """Write the state atomically (a kill while writing leaves the previous one)."""
        if self.rank != 0:
            return
        with replacing(self.path) as tmp:  # a full disk leaves the previous state, no part file
            torch.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "gen": self.g.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": self.epoch,
                    "step": self.step,
                    "perm": self.perm,
                    "loss_sums": json.dumps(self.loss_sums),
                    "seens": json.dumps(self.seens),
                    "wall_s": self.wall,
                    "config": json.dumps(asdict(self.cfg), sort_keys=True),
                    "key": json.dumps(self.key, sort_keys=True),
                    "history": json.dumps(self.history),
                },
                tmp,
            )

    def end_epoch(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        self.epoch += 1
        self._clear_epoch()
        self.save()


_WHAT = {"images": "other images (files, their sizes or times, or labels changed)",
         "weights": "other starting weights"}  # fmt: skip


def _other(saved: dict[str, str], now: dict[str, str]) -> str:
    """What differs between a saved run's key and this one's ('' when nothing does). A state
    saved before keys existed has none: it resumes, as it did then."""
    return " and ".join(_WHAT.get(k, k) for k in now if k in saved and saved[k] != now[k])


def _int_keys(rec: dict[str, Any]) -> dict[str, Any]:
    """A history record read back from JSON: per-resolution top-1 keyed by int, as when made."""
    top = rec.get("test_top1")
    if isinstance(top, dict):
        rec["test_top1"] = {int(k): v for k, v in top.items()}
    return rec
