"""The model card ``train`` writes beside its weights (``<out>.md``), in the format of the cards
of the shipped weights (``models/weights/cifar10-jpeg/*.md``): file and sha256, architecture,
data, start, recipe, the command that reproduces the run, where and how long, and the held-out
top-1 of every epoch at every training resolution."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset
from ..records import sha256_file, write_atomic


@dataclass
class CardFacts:
    """What the card says beyond the config and the result: who, from where, on what."""

    model: str  # registry name
    init: str  # where the starting weights came from: "random init", "<model>.<tag>", a file
    data: Dataset
    test: Dataset | None
    labels: str  # how the folder labels met the model's outputs (kept head, new head)
    params: int
    private_bn_numbers: int  # BN numbers per extra resolution (0: one BN set)
    data_flags: list[str] | None = None  # the CLI's data flags, when it was the CLI


def _weights_flags(model: str, init: str) -> list[str]:
    if init in ("", "random init"):
        return ["--random-init"]
    if init == f"{model}.pretrained":
        return ["--pretrained"]
    if init.startswith(f"{model}.") and not Path(init).exists():
        return ["--pretrained", init[len(model) + 1 :]]
    return ["--checkpoint", init]


def _bf16_default(model: str) -> bool:
    """Whether ``train`` turns bf16 on for ``model`` unasked (else the command says --bf16)."""
    from ..models import model_info
    from .autocast import bf16_pays

    try:
        return bf16_pays(model_info(model).family)
    except Exception:  # a name this registry no longer knows: say --bf16 to be safe
        return False


def command(cfg: Any, facts: CardFacts, out: Path) -> str:
    """The ``reswise train`` command that runs ``cfg`` again."""
    data = facts.data_flags or ["--dataset", "imagefolder", "--data-root", facts.data.name]
    parts = ["reswise", "train", "--model", facts.model, *_weights_flags(facts.model, facts.init)]
    parts += data + (["--test-root", facts.test.name] if facts.test is not None else [])
    parts += ["--epochs", str(cfg.epochs), "--lr", str(cfg.lr), "--warmup-epochs",
              str(cfg.warmup_epochs), "--batch-size", str(cfg.batch_size)]  # fmt: skip
    if not getattr(cfg, "specialists", ()) or cfg.specialist_labels:  # no labels: no smoothing
        parts += ["--label-smoothing", str(cfg.label_smoothing)]
    if getattr(cfg, "specialists", ()):
        parts += ["--specialists", ",".join(map(str, cfg.specialists))]
        parts += ["--labels"] * cfg.specialist_labels
        parts += ["--temperature", str(cfg.temperature)] * (cfg.temperature != 1.0)
    if cfg.train_resolutions:
        parts += ["--train-resolutions", ",".join(map(str, cfg.train_resolutions))]
        parts += ["--sandwich-k", "all" if cfg.sandwich_k is None else str(cfg.sandwich_k)]
    parts += ["--distill"] * cfg.distill + ["--shared-bn"] * (not cfg.private_bn)
    if cfg.largest_weight:
        parts += ["--largest-weight", str(cfg.largest_weight)]
    parts += ["--fp32"] * (not cfg.bf16) + ["--bf16"] * (
        cfg.bf16 and not _bf16_default(facts.model)
    )
    parts += ["--no-channels-last"] * (not cfg.channels_last)
    return shlex.join([*parts, "--seed", str(cfg.seed), "--out", str(out)])


def _recipe(cfg: Any, res: list[int], autocast: str) -> str:
    if getattr(cfg, "specialists", ()):
        step = (f"every step shows one augmented batch to the model at {res[0]}x{res[0]} "
                "(frozen, eval mode) and to each specialist at its resolution (bilinear + "
                "antialias); each specialist learns "
                + ("0.5 x KL to the model's softmax + 0.5 x cross-entropy on the labels"
                   if cfg.specialist_labels else "the model's softmax (KL), labels unused")
                + f", temperature {cfg.temperature}")  # fmt: skip
    elif len(res) > 1:
        k = "every resolution" if cfg.sandwich_k is None else f"k = {cfg.sandwich_k}"
        step = (f"every step runs the batch at the largest and the smallest resolution plus "
                f"{k} drawn between (sandwich rule, `--sandwich-k`), resized bilinear + "
                f"antialias; {'private BN per resolution' if cfg.private_bn else 'one shared BN set'}; "
                f"{'distill: the smaller resolutions learn 0.5 x CE + 0.5 x KL to the largest' if cfg.distill else 'no distillation'}; "
                f"largest-resolution loss weight {cfg.largest_weight or 'equal'}")  # fmt: skip
    else:
        step = f"single resolution {res[0]}"
    # label smoothing is part of the cross-entropy: specialists without labels have none
    ls = "" if cfg.specialists and not cfg.specialist_labels else \
        f", label smoothing {cfg.label_smoothing}"  # fmt: skip
    return (f"{cfg.epochs} epochs; {step}; SGD + Nesterov {cfg.momentum}, peak lr {cfg.lr} "
            f"for batch {cfg.batch_size}, {cfg.warmup_epochs}-epoch warm-up then cosine to 0, "
            f"weight decay {cfg.weight_decay} (weights only){ls}, autocast {autocast}, "
            f"{'channels-last' if cfg.channels_last else 'NCHW'}, seed {cfg.seed}")  # fmt: skip


def skipped_note(data: Any) -> str:
    """The files the folder held but no step saw (unreadable: ``--on-corrupt skip``)."""
    skipped = getattr(data, "skipped", [])
    if not skipped:
        return ""
    many = "s" if len(skipped) > 1 else ""
    path, why = skipped[0]
    return f"{len(skipped)} unreadable image{many} skipped ({path}: {why}{', ...' if many else ''})"


def _epochs(history: list[dict[str, Any]], res: list[int]) -> str:
    # the last epoch is scored on the run's test set; a resumed run may have scored earlier
    # epochs on another one: those lines say which
    now = (history[-1].get("test_set") or {}).get("fingerprint") if history else None
    lines = []
    for rec in history:
        top = rec.get("test_top1")
        if isinstance(top, dict):
            row = " / ".join(f"{top[r]:.2f}" for r in res)
        elif top is not None:
            row = f"{top:.2f}"
        else:
            continue
        was = rec.get("test_set")
        if was and was["fingerprint"] != now:
            row += f" (on `{was['name']}`, {was['n']} images: another test set)"
        lines.append(f"  - epoch {rec['epoch']}: {row}")
    return "\n".join(lines) or "  - (no held-out set was given: `--test-root`)"


def _python_only(cfg: Any) -> str:
    """What the command cannot say: settings that have no flag, changed from Python."""
    default = type(cfg)()
    if (cfg.momentum, cfg.weight_decay) == (default.momentum, default.weight_decay):
        return ""
    return (f" (with momentum {cfg.momentum} and weight decay {cfg.weight_decay} set from "
            "Python: the command has no flags for them)")  # fmt: skip


def _extra_state(numbers: int, extra: list[int], native: int, specialists: bool) -> str:
    """What the file holds per extra resolution, for the Architecture line."""
    if not extra or not numbers:
        return ""
    where = ", ".join(f"{r}x{r}" for r in extra)
    if specialists:
        return (f"; **specialists** (a whole copy of the weights, {numbers} numbers, per "
                f"resolution) for {where} under `reswise.bn.<r>.*`; the {native}x{native} "
                "weights are the starting model's, unchanged; `sweep`, `select`, `cascade`, "
                "`export` use each specialist at its resolution")  # fmt: skip
    return (f"; **private BatchNorm** ({numbers} numbers per resolution) for {where} under "
            "`reswise.bn.<r>.*`, used by `sweep`, `select`, `cascade`, `export` at those "
            "resolutions")  # fmt: skip


def write_card(out: Path, cfg: Any, facts: CardFacts, result: dict[str, Any]) -> Path:
    """Write ``<out>.md`` beside the weights ``out``; return its path."""
    specs = tuple(getattr(cfg, "specialists", ()))
    native = result["input_size"]
    res = sorted(cfg.train_resolutions or ([native, *specs] if specs else []), reverse=True) or [
        native
    ]
    where = " / ".join(map(str, res))
    d, t = facts.data, facts.test
    extra = [r for r in res if r != native]
    bn = _extra_state(facts.private_bn_numbers, extra, native, bool(specs))
    lines = [
        f"# {facts.model} · `{out.name}` (trained at {where})",
        "",
        f"- **File**: `{out.name}` (plain state_dict + `reswise.*` keys, "
        "`torch.load(..., weights_only=True)`)",
        f"- **sha256**: `{sha256_file(out)}`",
        f"- **Architecture**: `{facts.model}`, {facts.params / 1e6:.2f} M parameters, native input "
        f"{result['input_size']}x{result['input_size']}{bn}.",
        f"- **Outputs**: {result['num_classes']}; {facts.labels}; "
        + (
            "their class names ride in the file (`reswise.classes`)."
            if result["classes"]
            else "the file names no classes: output i is class folder i."
        ),  # fmt: skip
        f"- **Data**: trained on `{d.name}` ({len(d)} images, "
        + (f"{len(d.classes)} classes" if d.classes else "a flat folder, no labels")
        + (f"; {skipped_note(d)})" if d.skipped else ")")
        + (f", evaluated on `{t.name}` ({len(t)} images) after each epoch." if t else "."),
        f"- **Start**: {facts.init or 'random init'}"
        + (f"; {result['carried']}." if result.get("carried") else "."),
        f"- **Recipe** (`reswise.finetune.train`): {_recipe(cfg, res, result['autocast'])}.",
        f"- **Command**: `{command(cfg, facts, out)}`" + _python_only(cfg),
        f"- **Where and how long**: {result['device']} (PyTorch {torch.__version__}), "
        f"{result['world_size']} process(es), {result['wall_s']:.0f} s of training.",
        f"- **Held-out top-1** after each epoch ({where}):",
        _epochs(result["history"], res),
    ]
    path = out.with_suffix(".md")
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    return path
