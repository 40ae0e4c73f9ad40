"""Train or fine-tune any registered model on a folder of images, at one or several resolutions.

Recipe (stated in every model card): SGD + Nesterov momentum 0.9, weight decay 5e-4 on weights
(not on BN/bias), batch 128, linear warm-up for the first epoch then cosine decay to 0, label
smoothing 0.1, random crop (4-pixel reflect pad) + horizontal flip done on whole batches
(same-size folders; others stream, ``reswise.finetune.stream``). Seeded; the resumable state
(``--out`` + ``.state``) is saved after every epoch and when the run is stopped mid-epoch
(``reswise.finetune.state``); the final ``weights_only``-loadable state_dict goes to ``--out``
with the class names its outputs mean, and a model card beside it (``reswise.finetune.card``).
Under torchrun each process trains on its shard of every batch (``reswise.finetune.ddp``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset, FileImages, TensorImages, align_labels, normalizer
from ..errors import ReswiseError
from ..measure.flops import count_params
from ..measure.inference import available_cpus
from ..measure.progress import weights_digest
from ..models import LoadedModel
from ..models.checkpoint import checkpoint_state
from ..records import replacing
from ..records.rundir import hold, interruptible
from . import ddp
from .autocast import autocast_dtype  # importable here as before
from .card import CardFacts, skipped_note, write_card
from .carry import carry_note, trainee
from .checks import check_batches, preflight, state_path
from .head import fit_task
from .heldout import (  # noqa: F401 - evaluate_* importable here as before
    evaluate_multires,
    evaluate_top1,
    held_out,
    other_test_sets,
    test_facts,
)
from .multires import PrivateBN, loss_weights, sandwich
from .multires import multires_step as _step  # tests stop a run at a step: by this name
from .specialist import Specialists, recipe, specialist_labels, specialist_step
from .state import RunState, StopAtStepEnd
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
    # autocast to bfloat16 where the device has it (autocast_dtype): on an AVX-512 CPU a
    # ResNet-20 epoch took 50 s instead of 84 s; on an AVX2-only one a step is 10x slower
    bf16: bool = True
    # channels-last helps convolution-heavy nets (NASNet: 0.76 vs 1.75 s/step) but not the
    # depthwise-heavy MobileNetV2 (0.69 vs 0.59 s/step), so it is a per-model choice
    channels_last: bool = True
    init: str = ""  # where the starting weights came from (fine-tuning), for the model card
    # low-resolution specialists (reswise.finetune.specialist): one copy of the model per
    # resolution, distilled from the model at its native resolution; () = ordinary training
    specialists: tuple[int, ...] = ()
    specialist_labels: bool = False  # specialists: add cross-entropy on the folder labels
    temperature: float = 1.0  # specialists: softmax temperature of the distillation


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


@dataclass
class _Plan:
    """What every step of a run shares."""

    cfg: TrainConfig
    res: list[int]  # training resolutions, largest first
    multi: bool  # private BN per resolution: the model takes (x, r)
    scale_shift: tuple[torch.Tensor, torch.Tensor]
    dev: torch.device
    amp: torch.dtype | None  # autocast dtype, None: fp32
    rank: int = 0
    world: int = 1
    workers: int = 0
    progress: bool = False
    specialists: bool = False  # the model is Specialists: one step trains every copy


def _labels(
    lm: LoadedModel, data: Dataset, test: Dataset | None
) -> tuple[Dataset, Dataset | None, tuple[str, ...] | None, str]:
    """Training and test labels on ``lm``'s outputs; a new head when the folders are a new task."""
    data, names, how = fit_task(lm, data)
    if test is not None and not test.label_mapping:
        test, _ = align_labels(test, lm.info.class_names, num_classes=lm.info.num_classes)
    return data, test, names, how


def train(
    lm: LoadedModel,
    train_data: Dataset,
    cfg: TrainConfig,
    out: str | Path,
    test_data: Dataset | None = None,
    progress: bool = True,
    log: Any = print,
    device: str | torch.device = "cpu",
    workers: int = 4,
    data_flags: list[str] | None = None,
) -> dict[str, Any]:
    """Train ``lm.model`` in place; resume from ``out.state`` when it exists with the same config.

    Folders whose classes the model knows train its own head (labels mapped by name); any other
    folder trains a new head, one output per folder (``reswise.finetune.head``). Same-size images
    (:class:`TensorImages`) live on the device as one uint8 tensor and are augmented on whole
    batches; variable-size ones (:class:`FileImages`) are decoded per step by ``workers``
    DataLoader processes with random-resized-crop (``reswise.finetune.stream``).

    ``device`` is not part of the config: a run started on the CPU resumes on a GPU and back
    (augmentation draws stay on the CPU generator; only dropout-style noise differs).
    ``data_flags``: the CLI's data flags, for the model card's command.
    """
    out = Path(out)
    preflight(lm, cfg, out, len(train_data))  # flags, memory and --out: before any work
    rank, world, dev = ddp.setup(torch.device(device))
    check_batches(cfg, len(train_data), world)
    say = log if rank == 0 else (lambda m: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one writer per --out: a second run would share the .state and the last writer would win
    with hold(out.with_name(out.name + ".lock"), str(out)) if rank == 0 else nullcontext():
        try:
            return _train(lm, train_data, cfg, out, test_data, progress, say, dev, rank, world,
                          workers, data_flags)  # fmt: skip
        except RuntimeError as e:  # a lost torchrun rank: one line per survivor, not gloo's 90
            lost = ddp.lost_peer(e, rank, state_path(out)) if world > 1 else None
            if lost is None:
                raise
            raise lost from None


def _train(
    lm: LoadedModel,
    train_data: Dataset,
    cfg: TrainConfig,
    out: Path,
    test_data: Dataset | None,
    progress: bool,
    say: Any,
    dev: torch.device,
    rank: int,
    world: int,
    workers: int,
    data_flags: list[str] | None,
) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # before a new head draws its weights
    native, spec = lm.info.input_size, bool(cfg.specialists)
    if spec:
        train_data, test_data, names, how = specialist_labels(lm, train_data, test_data, cfg)
    else:
        train_data, test_data, names, how = _labels(lm, train_data, test_data)
    say(f"labels: {how}")
    if skipped := skipped_note(train_data):
        say(skipped)
    res = sorted(cfg.train_resolutions or [native, *cfg.specialists], reverse=True)
    if cfg.channels_last:
        lm.model.to(memory_format=torch.channels_last)
    # multi-resolution training with private BN trains a wrapper; the convolutions stay shared
    multi = len(res) > 1 and cfg.private_bn and not spec
    model = trainee(lm, cfg, res, native, multi)
    if carried := carry_note(lm, model):
        say(carried)
    model.to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # a handful of fixed shapes: tune once each
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True
    )
    # what else defines the run: the images (and labels) and the starting weights; a state
    # saved on other ones starts afresh instead of resuming onto them
    key = {"images": train_data.fingerprint(), "weights": weights_digest(model)}
    run = RunState(model, opt, g, cfg, state_path(out), rank, key)
    run.resume(say, out)
    test_set = test_facts(test_data)
    if note := other_test_sets(run.history, test_set):
        say(note)
    scale_shift = tuple(t.to(dev) for t in normalizer(lm.info.mean, lm.info.std))
    plan = _Plan(cfg, res, multi, scale_shift, dev, autocast_dtype(dev, cfg), rank, world,
                 min(workers, available_cpus()), progress, spec)  # fmt: skip
    net = ddp.wrap(model, dev, world)
    with interruptible():  # SIGTERM while evaluating or saving stops as Ctrl-C does
        while run.epoch < cfg.epochs:
            with ddp.global_batchnorm(model, world):
                rec = _epoch(run, net, plan, train_data)
            rec = {**_score(rec, run, lm, test_data, plan), **test_set}
            say(json.dumps(rec))
            run.end_epoch(rec)
    model.eval()
    result = {
        "epochs": cfg.epochs,
        "wall_s": run.wall,
        "history": run.history,
        "config": asdict(cfg),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "autocast": "off" if plan.amp is None else str(plan.amp).removeprefix("torch."),
        "world_size": world,
        "num_classes": lm.info.num_classes,
        "classes": list(names) if names is not None else None,
        "labels": how,
        "carried": carried,  # what became of the weights' per-resolution state (None: none)
        "input_size": lm.info.input_size,
    }
    if rank == 0:
        _finish(lm, model, out, result, names, train_data, test_data, data_flags)
    return result


def _score(
    rec: dict[str, Any], run: RunState, lm: LoadedModel, test: Dataset | None, plan: _Plan
) -> dict[str, Any]:
    """The epoch's record with its held-out top-1 (rank 0 evaluates), on every rank."""
    try:
        if test is not None and plan.rank == 0:
            run.model.eval()
            rec["test_top1"] = held_out(lm, run.model, test, plan.res, str(plan.dev))
        return ddp.from_rank0(rec, plan.world)
    except KeyboardInterrupt:
        run.save()  # the epoch's steps are done: the rerun evaluates and goes on
        raise


def _finish(
    lm: LoadedModel,
    model: nn.Module,
    out: Path,
    result: dict[str, Any],
    names: tuple[str, ...] | None,
    data: Dataset,
    test: Dataset | None,
    data_flags: list[str] | None,
) -> None:
    """Write the weights (CPU tensors, each extra resolution's private BN, the class names the
    outputs mean) and the model card beside them."""
    cfg = TrainConfig(**{**result["config"], **{k: tuple(result["config"][k]) for k in (
        "train_resolutions", "specialists")}})  # fmt: skip
    if isinstance(model, Specialists):
        final = model.checkpoint_state(
            names,
            recipe(cfg, lm.info.input_size, cfg.init or lm.weights, model.continued, model.before),
        )
    elif isinstance(model, PrivateBN):
        final = model.checkpoint_state(names)
    else:
        final = checkpoint_state(model.state_dict(), {}, names)
    bn_numbers = sum(t.numel() for t in model.overrides(model.extra[0]).values()) if isinstance(
        model, (PrivateBN, Specialists)) else 0  # fmt: skip
    with replacing(out) as tmp:  # never half a weights file at --out
        torch.save(final, tmp)
    facts = CardFacts(lm.info.name, cfg.init or lm.weights, data, test, result["labels"],
                      count_params(lm.model), bn_numbers, data_flags)  # fmt: skip
    result["card"] = str(write_card(out, cfg, facts, result))


def _stop(run: RunState, plan: _Plan, step: int, tot: torch.Tensor, seen: int) -> None:
    """Save the state at this step boundary (every rank's loss and image count) and stop."""
    run.step = step
    run.loss_sums = ddp.gather(float(tot.item()), plan.world)
    run.seens = ddp.gather(seen, plan.world)
    run.save()
    raise KeyboardInterrupt


def _asked(stop: StopAtStepEnd, plan: _Plan) -> bool:
    """Whether any rank was asked to stop: every rank stops at the same step."""
    if plan.world == 1:
        return stop.asked > 0
    return bool(ddp.total(torch.tensor([stop.asked], device=plan.dev), plan.world).item())


def _epoch(run: RunState, net: nn.Module, plan: _Plan, data: Dataset) -> dict[str, Any]:
    cfg, g, dev = plan.cfg, run.g, plan.dev
    n, bs = len(data), cfg.batch_size
    steps = math.ceil(n / bs)  # the last partial batch counts: a small folder still learns
    total, warmup = steps * cfg.epochs, int(cfg.warmup_epochs * steps)
    if run.step == 0 and not isinstance(data, FileImages):
        run.perm = torch.randperm(n, generator=g)  # drawn on the CPU generator, kept in the state
    mine = lambda xs: xs[plan.rank] if plan.rank < len(xs) else 0  # noqa: E731
    tot, seen = torch.tensor(float(mine(run.loss_sums)), device=dev), int(mine(run.seens))
    t0 = time.perf_counter()
    net.train()
    batches = _batches(data, plan, run)
    from tqdm import tqdm

    bar = tqdm(total=n, initial=min(n, run.step * bs), unit="img", leave=False,
               desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
               disable=not plan.progress or plan.rank != 0)  # fmt: skip
    with StopAtStepEnd() as stop, bar:
        for s in range(run.step, steps):
            if _asked(stop, plan):
                run.wall += time.perf_counter() - t0
                _stop(run, plan, s, tot, seen)
            for gr in run.opt.param_groups:
                gr["lr"] = lr_at(run.epoch * steps + s, total, warmup, cfg.lr)
            xb, yb = next(batches)
            run.opt.zero_grad(set_to_none=True)
            if plan.specialists:
                loss = specialist_step(net, xb, yb, plan)
            else:
                step_res = sandwich(plan.res, cfg.sandwich_k, g)  # all of them when <= 2
                weights = loss_weights(len(step_res), cfg.largest_weight)
                loss = _step(net, xb, yb, plan, step_res, weights)
            if not torch.isfinite(loss):  # stop before the step writes NaN into the weights
                raise ReswiseError(
                    f"non-finite loss at epoch {run.epoch + 1}, step {s + 1} (lr "
                    f"{run.opt.param_groups[0]['lr']:.3g}); the last saved state is kept: "
                    "rerun with a lower --lr (or --fp32)"
                )
            run.opt.step()
            tot += loss * len(yb)
            seen += len(yb)
            bar.update(min(bs, n - s * bs))
            if s % 20 == 0 and bar.n and not bar.disable:
                bar.set_postfix(loss=f"{tot.item() / max(1, seen):.3f}")
        if dev.type == "cuda":
            torch.cuda.synchronize()  # the epoch's wall time includes its queued GPU work
        run.wall += time.perf_counter() - t0
        if _asked(stop, plan):  # asked during the last step: evaluate and save on the rerun
            _stop(run, plan, steps, tot, seen)
    # the state as of the epoch's last step, in case evaluating it is interrupted
    run.step, run.loss_sums = steps, ddp.gather(float(tot.item()), plan.world)
    run.seens = per_rank = ddp.gather(seen, plan.world)
    loss_sum = sum(run.loss_sums)
    return {"epoch": run.epoch + 1, "loss": loss_sum / max(1, sum(per_rank)),
            "wall_s": run.wall, "images_per_rank": per_rank}  # fmt: skip


def _batches(
    data: Dataset, plan: _Plan, run: RunState
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The rest of the epoch from step ``run.step``: this rank's share of every augmented batch
    (float 0..255) and its labels, the last partial batch included."""
    cfg, dev, bs = plan.cfg, plan.dev, plan.cfg.batch_size
    if isinstance(data, FileImages):
        yield from stream_batches(data, plan.res[0], bs, seed=cfg.seed, epoch=run.epoch,
                                  workers=plan.workers, device=dev, start=run.step,
                                  shard=(plan.rank, plan.world))  # fmt: skip
        return
    assert isinstance(data, TensorImages)
    # the whole uint8 set lives on the device (150 MB for CIFAR-10): no loader on the hot path
    images, labels, perm = data.images.to(dev), data.labels.to(dev), run.perm.to(dev)
    for s in range(run.step * bs, len(data), bs):
        idx = perm[s : s + bs]
        xb = augment(images[idx], run.g)  # every rank draws the whole batch: same generator
        yield ddp.shard(xb, plan.rank, plan.world), ddp.shard(labels[idx], plan.rank, plan.world)
