"""One-pass multi-resolution sweep: decode each image once, evaluate it at every resolution.

``sweep(model, dataset, resolutions)`` returns a :class:`SweepResult` with one flat row per
resolution and per-sample :class:`Records` (label, top-k classes and probabilities, entropy per
resolution), so later analyses (selection, cascades, oracle) need no second model pass.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Dataset, ResizePolicy, normalizer, to_input
from ..errors import ReswiseError
from ..models import LoadedModel, check_finite
from ..records import Records, SweepResult, summarize
from .backends import Runner, check_backend, make_runner, pick_runner
from .flops import flops_table
from .inference import (
    check_memory,
    check_resolutions,
    default_batch_size,
    fold_for_inference,
    resolve_device,
)
from .progress import Progress, config_key, weights_digest, weights_sha256


def images_fingerprint(dataset: Dataset) -> str:
    """Which images, in which order, with which labels (see Dataset.fingerprint)."""
    fp = getattr(dataset, "fingerprint", None)
    return fp() if fp else f"{dataset.name}|{len(dataset)}"


def _prefetch(fn: Callable[[int], Any], n: int) -> Iterator[Any]:
    """Yield fn(0..n-1), computing item i+1 in a thread while the caller works on item i."""
    box: dict[int, Any] = {}

    def work(i: int) -> None:
        try:
            box[i] = fn(i)
        except BaseException as e:  # re-raised in the caller's thread
            box[i] = e

    t = threading.Thread(target=work, args=(0,))
    t.start()
    for i in range(n):
        t.join()
        item = box.pop(i)
        if i + 1 < n:
            t = threading.Thread(target=work, args=(i + 1,))
            t.start()
        if isinstance(item, BaseException):
            raise item
        yield item


def sweep(
    model: nn.Module | LoadedModel,
    dataset: Dataset,
    resolutions: list[int],
    reference: int | None = None,
    *,
    policy: ResizePolicy | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    batch_size: int | None = None,
    topk: int = 5,
    fast: bool = True,
    device: str = "cpu",
    progress: bool = False,
    checkpoint_path: str | Path | None = None,
    shard: tuple[int, int] = (0, 1),
    bn_states: dict[int, dict[str, torch.Tensor]] | None = None,
    save_every_s: float = 30.0,
    keep_progress: bool = False,
    backend: str = "eager",
    runners: dict[int, Runner] | None = None,
) -> SweepResult:
    """Evaluate ``model`` on ``dataset`` at every resolution, decoding each image once.

    ``model`` is a :class:`LoadedModel` (preprocessing facts come with it) or any ``nn.Module``
    (then pass ``mean``/``std``; ImageNet's are the default). ``checkpoint_path`` saves progress
    as it goes and resumes a run with the same configuration (``keep_progress``: leave the file
    for the caller to delete once it has written the results). ``shard=(rank, world)`` evaluates
    every world-th chunk starting at rank (used by the distributed sweep). ``bn_states`` maps a
    resolution to BatchNorm buffers to load before evaluating at it (BN recalibration); a
    LoadedModel's own per-resolution state is used when it is not given. ``backend`` runs the
    forward (:mod:`reswise.measure.backends`; ``auto`` picks per resolution); ``runners`` gives
    the forward per resolution outright (the int8 and bf16 stages of ``sweep --precision``).
    """
    device = str(resolve_device(device))
    backend = check_backend(backend, device)
    info, name, weights, net, policy, bn_states = _unpack(model, policy, bn_states)
    mean = mean or (info.mean if info else (0.485, 0.456, 0.406))
    std = std or (info.std if info else (0.229, 0.224, 0.225))
    resolutions, reference, bs = _plan(info, dataset, resolutions, reference, batch_size)
    check_memory(info, net, resolutions, bs)
    flops = flops_table(net, resolutions, reference)  # also proves every resolution runs
    t0 = time.perf_counter()  # backend set-up (export, compile, probe) counts against the run
    n_batches = -(-len(dataset) // bs) // shard[1]
    kw = {"backend": backend, "name": name, "batch": bs, "n_batches": n_batches}
    if runners is not None:
        nets, fast_desc = {r: runners[r] for r in resolutions}, runners[resolutions[0]].backend
    else:
        nets, fast_desc = build_nets(net, resolutions, bn_states, fast, device, **kw)
    setup_s = time.perf_counter() - t0
    key = config_key(
        model=name,
        weights=weights,
        digest=weights_digest(net),
        bn=sorted(bn_states or {}),
        images=images_fingerprint(dataset),
        res=resolutions,
        bs=bs,
        settings=(repr(policy), mean, std, shard, fast, device, topk),
        backends=[nets[r].backend for r in resolutions],
        threads=torch.get_num_threads(),
    )
    saver = Progress(checkpoint_path, key)
    loop = _Loop(dataset, resolutions, bs, shard, topk, normalizer(mean, std), policy, device)
    records, seconds = loop.run(nets, saver, save_every_s, progress, name, keep_progress)
    result = SweepResult(
        model=name,
        weights=weights,
        dataset=dataset.name,
        reference=reference,
        policy=policy.describe(),
        interpolation=policy.interpolation,
        rows=summarize(records, reference, flops, seconds),
        records=records,
        skipped=list(getattr(dataset, "skipped", [])),
        fast_path=fast_desc,
        meta=_meta(model, net, dataset, {r: nets[r].backend for r in resolutions}),
        timings=_timings(t0, setup_s, seconds),
    )
    return result


def _meta(
    model: nn.Module | LoadedModel, net: nn.Module, dataset: Dataset, backends: dict[int, str]
) -> dict[str, Any]:
    """Which images and which weights (by the sha256 policy files check weights by, so a
    policy is matched to its run without loading the weights), and the backend per r."""
    extra = model.extra.per_resolution if isinstance(model, LoadedModel) else None
    return {
        "images_fingerprint": images_fingerprint(dataset),
        "weights_sha256": weights_sha256(net, extra),
        "backend_by_res": {str(r): b for r, b in backends.items()},
    }


def _timings(t0: float, setup_s: float, seconds: np.ndarray) -> dict[str, Any]:
    return {
        "total_s": time.perf_counter() - t0,
        "backend_setup_s": setup_s,
        "eval_s": float(seconds.sum()),
        "eval_s_by_res": [float(f) for f in seconds],
    }


def _plan(
    info: Any,
    dataset: Dataset,
    resolutions: list[int],
    reference: int | None,
    batch_size: int | None,
) -> tuple[list[int], int, int]:
    """Resolutions (the reference first when it was not listed), reference and batch size."""
    resolutions = list(resolutions)
    reference = reference if reference is not None else max(resolutions)
    if reference not in resolutions:
        resolutions = [reference, *resolutions]
    check_resolutions(info, resolutions)
    if len(dataset) == 0:
        raise ReswiseError("the dataset is empty; check --data-root and --limit")
    bs = batch_size if batch_size is not None else default_batch_size(max(resolutions))
    if bs <= 0:
        raise ReswiseError(f"--batch-size must be positive, got {bs}")
    return resolutions, reference, bs


def _unpack(
    model: nn.Module | LoadedModel,
    policy: ResizePolicy | None,
    bn_states: dict[int, dict[str, torch.Tensor]] | None,
) -> tuple[Any, str, str, nn.Module, ResizePolicy, dict[int, dict[str, torch.Tensor]] | None]:
    """Info, name, weights, module, resize policy and per-resolution BN of what was passed."""
    if not isinstance(model, LoadedModel):
        check_finite(
            model, f"the {model.__class__.__name__} passed to sweep"
        )  # create_model checks its own
        return (
            None,
            model.__class__.__name__,
            "user module",
            model,
            policy or ResizePolicy(),
            bn_states,
        )
    weights = model.weights
    if bn_states is None and model.extra:  # weights that carry per-resolution BN/adapters
        bn_states = model.extra.per_resolution
        weights += f" + {model.extra.describe(model.model.state_dict().keys())}"
    return (
        model.info,
        model.info.name,
        weights,
        model.model,
        policy or model.info.eval_policy(),
        bn_states,
    )


def build_nets(
    net: nn.Module,
    resolutions: list[int],
    bn_states: dict[int, dict[str, torch.Tensor]] | None,
    fast: bool,
    device: str,
    *,
    backend: str = "eager",
    name: str = "model",
    batch: int = 128,
    n_batches: int = 0,
) -> tuple[dict[int, Runner], str]:
    """The runner at each resolution, BN folded once per distinct set of weights.

    One folded copy serves every resolution that keeps the shared weights; only resolutions
    with their own BN statistics / adapters get a copy of their own. ``backend`` is one of
    :data:`reswise.measure.backends.BACKENDS`; ``auto`` probes per resolution (``n_batches`` says how
    long the run is, so a short run is not slowed by probing).
    """
    desc = "eager"

    def prepare(base: nn.Module) -> nn.Module:
        nonlocal desc
        if fast:
            base, desc = fold_for_inference(base, channels_last=(device == "cpu"))
        return base.eval().to(device)

    shared: tuple[nn.Module, nn.Module] | None = None
    nets: dict[int, Runner] = {}
    for r in resolutions:
        if bn_states and r in bn_states:
            own = copy.deepcopy(net)
            own.load_state_dict(bn_states[r], strict=False)
            pair = (prepare(own), own)
        else:
            shared = shared if shared is not None else (prepare(net), net)
            pair = shared
        kw = {"name": name, "resolution": r, "batch": batch, "device": device}
        if backend == "auto":
            nets[r] = pick_runner(*pair, n_batches=n_batches, **kw)
        else:
            nets[r] = make_runner(backend, *pair, **kw)
    return nets, desc


class _Loop:
    """The one pass: each batch decoded once, then resized, normalised and run at every r."""

    def __init__(
        self,
        dataset: Dataset,
        resolutions: list[int],
        bs: int,
        shard: tuple[int, int],
        topk: int,
        scale_shift: Any,
        policy: ResizePolicy,
        device: str,
    ) -> None:
        rank, world = shard
        n = len(dataset)
        self.dataset, self.resolutions, self.topk = dataset, resolutions, topk
        self.scale_shift, self.policy, self.device = scale_shift, policy, device
        self.chunks = [(s, min(s + bs, n)) for s in range(0, n, bs)][rank::world]
        self.mine = (
            np.concatenate([np.arange(a, b) for a, b in self.chunks])
            if self.chunks
            else np.zeros(0, np.int64)
        )
        R, N = len(resolutions), len(self.mine)
        self.state: dict[str, Any] = {
            "done": 0,
            "topk_idx": None,
            "topk_prob": None,
            "entropy": np.zeros((R, N), np.float32),
            "fwd": np.zeros(R),
        }
        self.checked = False  # the class count is checked against the first logits

    def _allocate(self, num_classes: int) -> None:
        if len(self.dataset.classes) > num_classes:
            raise ReswiseError(
                f"the dataset has {len(self.dataset.classes)} classes but the model predicts "
                f"{num_classes}; labels would not line up"
            )
        self.k = min(self.topk, num_classes)
        if self.state["topk_idx"] is None:
            shape = (len(self.resolutions), len(self.mine), self.k)
            self.state["topk_idx"] = np.zeros(shape, np.int32)
            self.state["topk_prob"] = np.zeros(shape, np.float32)

    def _batch(
        self, nets: dict[int, Runner], images: Any, pos: int, m: int, span: tuple[int, int]
    ) -> None:
        st = self.state
        for ri, r in enumerate(self.resolutions):
            t = time.perf_counter()
            cl = nets[r].channels_last
            x = self.policy(images, r)
            x = x.float() if nets[r].pixels else to_input(x, self.scale_shift, channels_last=cl)
            logits = nets[r](x.to(self.device)).float()
            if not self.checked:
                self._allocate(logits.shape[1])
                self.checked = True
            if not torch.isfinite(logits).all():
                raise ReswiseError(
                    f"the model's outputs at {r}x{r} are not finite (NaN/Inf) for images "
                    f"{span[0]}..{span[1] - 1}; check the weights and the input normalisation"
                )
            logp = torch.log_softmax(logits, 1)
            p = logp.exp()
            top = p.topk(self.k, 1)
            ent = -(p * logp).sum(1)
            st["fwd"][ri] += time.perf_counter() - t
            st["topk_idx"][ri, pos : pos + m] = top.indices.cpu().numpy()
            st["topk_prob"][ri, pos : pos + m] = top.values.cpu().numpy()
            st["entropy"][ri, pos : pos + m] = ent.cpu().numpy()

    def run(
        self,
        nets: dict[int, Runner],
        saver: Progress,
        save_every_s: float,
        progress: bool,
        name: str,
        keep_progress: bool = False,
    ) -> tuple[Records, np.ndarray]:
        saved = saver.load()
        if saved is not None:
            self.state = saved
        st, chunks = self.state, self.chunks
        start = st["done"]
        pos = sum(b - a for a, b in chunks[:start])
        it = _prefetch(
            lambda i: self.dataset.get(torch.arange(*chunks[i + start])), len(chunks) - start
        )
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(chunks), initial=start, unit="batch", desc=f"sweep {name}")
        last_save, finished, saved_at = time.perf_counter(), start, start
        try:
            with torch.inference_mode():
                for ci, images in enumerate(it, start=start):
                    a, b = chunks[ci]
                    self._batch(nets, images, pos, b - a, (a, b))
                    pos, finished = pos + b - a, ci + 1
                    if bar:
                        bar.update(1)
                    if time.perf_counter() - last_save >= save_every_s:
                        saver.save(finished, st)
                        last_save, saved_at = time.perf_counter(), finished
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep every batch finished so far
            if finished > saved_at:
                saver.save(finished, st)
            raise
        finally:
            if bar:
                bar.close()
        if keep_progress:  # complete: a failure to write the results then costs no rework
            saver.save(len(chunks), st)
        else:
            saver.discard()
        return self._records(), st["fwd"]

    def _records(self) -> Records:
        st, R = self.state, len(self.resolutions)
        if st["topk_idx"] is None:  # an empty shard
            st["topk_idx"] = np.zeros((R, 0, self.topk), np.int32)
            st["topk_prob"] = np.zeros((R, 0, self.topk), np.float32)
        labels = self.dataset.labels.numpy()
        mine = self.mine.astype(np.int64)
        return Records(
            list(self.resolutions),
            mine,
            labels[mine].astype(np.int64),
            st["topk_idx"],
            st["topk_prob"],
            st["entropy"],
        )
