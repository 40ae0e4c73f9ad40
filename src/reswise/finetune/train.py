"""Train or fine-tune a CIFAR-size model on uint8 tensors in memory (airbench style).

Recipe (stated in every model card): SGD + Nesterov momentum 0.9, weight decay 5e-4 on weights
(not on BN/bias), batch 128, linear warm-up for the first epoch then cosine decay to 0, label
smoothing 0.1, random crop (4-pixel reflect pad) + horizontal flip done on whole batches.
Seeded; saves a resumable checkpoint after every epoch (``--out`` + ``.state``) and the final
``weights_only``-loadable state_dict at ``--out``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset, FileImages, TensorImages, normalizer, to_input
from ..errors import ReswiseError
from ..measure.inference import available_cpus
from ..models import LoadedModel
from ..models.checkpoint import checkpoint_state
from .multires import PrivateBN
from .stream import stream_batches


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate for batch 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    seed: int = 0
    train_resolutions: tuple[int, ...] = ()  # empty: native resolution only
    private_bn: bool = True  # multi-resolution: one BN set per resolution, shared convolutions
    distill: bool = False  # multi-resolution: smaller resolutions also learn the largest's output
    # multi-resolution: share of the loss on the largest resolution (the rest split evenly);
    # 0 = all resolutions equal. More weight keeps the native resolution's accuracy.
    largest_weight: float = 0.0
    # multi-resolution: per step the largest and smallest resolution plus this many sampled
    # uniformly from those strictly between (the sandwich rule of slimmable / US-Nets); None:
    # every resolution every step (the recipe of the weights shipped before the rule)
    sandwich_k: int | None = 1
    bf16: bool = True  # CPU autocast to bfloat16: measured 50 s vs 84 s per ResNet-20 epoch here
    # channels-last helps convolution-heavy nets (NASNet: 0.76 vs 1.75 s/step) but not the
    # depthwise-heavy MobileNetV2 (0.69 vs 0.59 s/step), so it is a per-model choice
    channels_last: bool = True
    init: str = ""  # where the starting weights came from (fine-tuning), for the model card


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with reflect padding and random horizontal flip, on a whole uint8 batch.

    The random draws come from the CPU generator ``g`` wherever ``x`` lives, so a run draws
    the same crops and flips on a GPU as on the CPU and resumes from the same saved state.
    """
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(dev)
    flip = (torch.rand(b, generator=g) < 0.5).to(dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    rows = dy[:, None] + torch.arange(h, device=dev)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def loss_weights(n: int, largest: float = 0.0) -> list[float]:
    """Loss weight per training resolution, largest first; they sum to 1."""
    if n == 1:
        return [1.0]
    if not 0.0 <= largest < 1.0:
        raise ReswiseError(f"--largest-weight must be in [0, 1), got {largest}")
    if largest == 0.0:
        return [1.0 / n] * n
    return [largest] + [(1.0 - largest) / (n - 1)] * (n - 1)


def sandwich(res_cycle: list[int], k: int | None, g: torch.Generator) -> list[int]:
    """This step's resolutions, largest first: the largest, the smallest and ``k`` drawn
    uniformly without replacement from those strictly between (all of them when ``k`` is None
    or covers them). Drawn on the CPU generator, so a resumed run draws the same."""
    if k is not None and k < 0:
        raise ReswiseError(f"--sandwich-k must be 0 or more, got {k}")
    inner = res_cycle[1:-1]
    if k is None or k >= len(inner):
        return list(res_cycle)
    pick = torch.randperm(len(inner), generator=g)[:k].sort().values.tolist()
    return [res_cycle[0], *(inner[i] for i in pick), res_cycle[-1]]


# fields added after runs were saved, with the value those runs used (not today's default)
_LEGACY = {"sandwich_k": None}


def _same_config(saved: str, cfg: TrainConfig) -> bool:
    # fields added to TrainConfig after a run started take their defaults, so it still resumes
    as_json = lambda c: json.loads(json.dumps(asdict(c)))  # noqa: E731 - tuples become lists
    return {**as_json(TrainConfig()), **_LEGACY, **json.loads(saved)} == as_json(cfg)


def evaluate_multires(
    lm: LoadedModel, wrapper: PrivateBN, data: Dataset, device: str = "cpu"
) -> dict[int, float]:
    """Test top-1 at every training resolution, each with its own BN set."""
    from ..measure.evaluate import sweep

    states = {r: {k: v.detach() for k, v in wrapper.overrides(r).items()} for r in wrapper.extra}
    res = [wrapper.native, *wrapper.extra]
    rows = sweep(lm, data, res, bn_states=states, batch_size=256, device=device).rows
    return {row["resolution"]: row["top1"] for row in rows}


def evaluate_top1(
    lm: LoadedModel, data: Dataset, batch_size: int = 256, device: str = "cpu"
) -> float:
    from ..measure.evaluate import sweep

    r = lm.info.input_size
    return sweep(lm, data, [r], batch_size=batch_size, device=device).rows[0]["top1"]


def _step(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    res_cycle: list[int],
    weights: list[float],
    multi: bool,
    scale_shift: Any,
    dev: torch.device,
) -> torch.Tensor:
    """Forward and backward at every training resolution (largest first, so it can teach)."""
    loss = torch.zeros((), device=dev)
    teacher = None
    for r, w in zip(res_cycle, weights):
        x = (
            xb
            if r == xb.shape[-1]
            else F.interpolate(
                xb, size=(r, r), mode="bilinear", antialias=True, align_corners=False
            )
        )
        x = to_input(x, scale_shift, channels_last=cfg.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = (model(x, r) if multi else model(x)).float()
        li = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        if cfg.distill and teacher is not None:
            kl = F.kl_div(logits.log_softmax(1), teacher, reduction="batchmean")
            li = 0.5 * li + 0.5 * kl
        if teacher is None:
            teacher = logits.detach().softmax(1)
        (li * w).backward()
        loss += li.detach() * w  # no .item(): a GPU keeps running ahead
    return loss


class _Run:
    """Model, optimiser, generator and history of one training run, saved after every epoch."""

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        g: torch.Generator,
        cfg: TrainConfig,
        state_path: Path,
    ) -> None:
        self.model, self.opt, self.g, self.cfg, self.path = model, opt, g, cfg, state_path
        self.start_epoch, self.wall = 0, 0.0
        self.history: list[dict[str, Any]] = []

    def resume(self, log: Any, out: Path) -> None:
        if not self.path.is_file():
            return
        st = torch.load(self.path, map_location="cpu", weights_only=True)
        if not _same_config(st["config"], self.cfg):
            log(f"{self.path} was made with another config; starting afresh")
            return
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.g.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        self.start_epoch, self.wall = int(st["epoch"]), float(st["wall_s"])
        self.history = json.loads(st["history"])
        log(f"resuming {out} from epoch {self.start_epoch}")

    def save(self, epoch: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "gen": self.g.get_state(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch,
                "wall_s": self.wall,
                "config": json.dumps(asdict(self.cfg), sort_keys=True),
                "history": json.dumps(self.history),
            },
            tmp,
        )
        tmp.replace(self.path)


def train(
    lm: LoadedModel,
    train_data: TensorImages,
    cfg: TrainConfig,
    out: str | Path,
    test_data: Dataset | None = None,
    progress: bool = True,
    log: Any = print,
    device: str | torch.device = "cpu",
    workers: int = 4,
) -> dict[str, Any]:
    """Train ``lm.model`` in place; resume from ``out.state`` when it exists with the same config.

    Same-size images (:class:`TensorImages`) live on the device as one uint8 tensor and are
    augmented on whole batches; variable-size ones (:class:`FileImages`) are decoded per step by
    ``workers`` DataLoader processes with random-resized-crop (``reswise.finetune.stream``).

    ``device`` is not part of the config: a run started on the CPU resumes on a GPU and back
    (augmentation draws stay on the CPU generator; only dropout-style noise differs).
    """
    dev = torch.device(device)
    workers = min(workers, available_cpus())  # more decoders than cores only contend
    if cfg.epochs <= 0:
        raise ReswiseError(f"--epochs must be positive, got {cfg.epochs}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res_cycle = sorted(cfg.train_resolutions or [lm.info.input_size], reverse=True)
    if cfg.channels_last:
        lm.model.to(memory_format=torch.channels_last)
    # multi-resolution training with private BN trains a wrapper; the convolutions stay shared
    multi = len(res_cycle) > 1 and cfg.private_bn
    model: nn.Module = PrivateBN(lm.model, res_cycle, lm.info.input_size) if multi else lm.model
    model.to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # a handful of fixed shapes: tune once each
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True
    )
    run = _Run(model, opt, g, cfg, out.with_suffix(out.suffix + ".state"))
    run.resume(log, out)
    for epoch in range(run.start_epoch, cfg.epochs):
        rec = _epoch(run, lm, train_data, epoch, res_cycle, multi, dev, progress, workers)
        if test_data is not None:
            model.eval()
            if multi:
                rec["test_top1"] = evaluate_multires(lm, model, test_data, device=str(dev))
            else:
                rec["test_top1"] = evaluate_top1(lm, test_data, device=str(dev))
        run.history.append(rec)
        log(json.dumps(rec))
        run.save(epoch + 1)
    model.eval()
    # CPU tensors, so the file loads anywhere; multi-resolution adds each resolution's private BN
    # the folder names trained on travel with the weights, so evaluation maps labels by name
    names = train_data.classes if len(train_data.classes) == lm.info.num_classes else None
    final = (
        model.checkpoint_state(names) if multi else checkpoint_state(model.state_dict(), {}, names)
    )
    torch.save(final, out)
    return {
        "epochs": cfg.epochs,
        "wall_s": run.wall,
        "history": run.history,
        "config": asdict(cfg),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }


def _epoch(
    run: _Run,
    lm: LoadedModel,
    train_data: TensorImages,
    epoch: int,
    res_cycle: list[int],
    multi: bool,
    dev: torch.device,
    progress: bool,
    workers: int = 4,
) -> dict[str, Any]:
    cfg, model, opt, g = run.cfg, run.model, run.opt, run.g
    n = len(train_data)
    # the last partial batch counts: a folder smaller than one batch still learns
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    scale_shift = tuple(t.to(dev) for t in normalizer(lm.info.mean, lm.info.std))
    t0 = time.perf_counter()
    model.train()
    batches = _batches(train_data, cfg, g, epoch, res_cycle[0], dev, workers)
    tot_loss, seen = torch.zeros((), device=dev), 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
    for s in range(steps_per_epoch):
        for gr in opt.param_groups:
            gr["lr"] = lr_at(epoch * steps_per_epoch + s, total, warmup, cfg.lr)
        xb, yb = next(batches)
        opt.zero_grad(set_to_none=True)
        step_res = sandwich(res_cycle, cfg.sandwich_k, g)  # all of them when <= 2
        weights = loss_weights(len(step_res), cfg.largest_weight)
        loss = _step(model, xb, yb, cfg, step_res, weights, multi, scale_shift, dev)
        opt.step()
        tot_loss += loss * len(yb)
        seen += len(yb)
        if bar:
            bar.update(1)
            if s % 20 == 0:
                bar.set_postfix(loss=f"{tot_loss.item() / seen:.3f}")
    if bar:
        bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize()  # the epoch's wall time includes its queued GPU work
    run.wall += time.perf_counter() - t0
    return {"epoch": epoch + 1, "loss": tot_loss.item() / max(1, seen), "wall_s": run.wall}


def _batches(
    data: Dataset,
    cfg: TrainConfig,
    g: torch.Generator,
    epoch: int,
    size: int,
    dev: torch.device,
    workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of augmented batches (float 0..255) and labels, the last partial one included."""
    if isinstance(data, FileImages):
        yield from stream_batches(data, size, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                  workers=workers, device=dev)  # fmt: skip
        return
    # the whole uint8 set lives on the device (150 MB for CIFAR-10): no loader on the hot path
    images, labels = data.images.to(dev), data.labels.to(dev)
    perm = torch.randperm(len(data), generator=g).to(dev)  # drawn on the CPU generator, moved once
    for s in range(0, len(data), cfg.batch_size):
        idx = perm[s : s + cfg.batch_size]
        yield augment(images[idx], g), labels[idx]
