"""Low-resolution specialists distilled from the model itself, without labels.

One full copy of the user's model per resolution below its native one, each started from the
model and trained at its resolution to match the model's own softmax at the native resolution
on the *same* augmented view (the teacher sees the crop and flip the student sees, only
larger). Labels are optional: the teacher's outputs are the target, so a flat folder of the
user's own unlabelled images is enough. The model itself is never trained and stays the
native stage bit for bit; each copy is saved as per-resolution state (every tensor of the
state_dict under ``reswise.bn.<r>.*``), the format BN recalibration and adapters already use,
so ``sweep``, ``cascade``, ``export`` and the runtime pick a specialist up at its resolution
without knowing what it is.

Why distill from the model and not retrain with labels (``--train-resolutions``): one forward
of the teacher plus one training step per specialist is an order of magnitude cheaper than a
multi-resolution step, needs no labels, and leaves the user's model untouched.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset, align_labels, to_input
from ..errors import ReswiseError
from ..models.checkpoint import checkpoint_state
from .multires import continued, resize


class Specialists(nn.Module):
    """The teacher (``model``, never trained, not a submodule) and one trainable copy of it per
    resolution in ``resolutions``; ``forward(x, r)`` runs the copy for r (the teacher at
    ``native``). ``extra`` and ``overrides(r)`` speak :class:`PrivateBN`'s interface, so the
    held-out evaluation and the checkpoint writer treat both alike."""

    def __init__(
        self,
        model: nn.Module,
        resolutions: list[int],
        native: int,
        start: dict[int, dict[str, torch.Tensor]] | None = None,
        before: str | None = None,
    ):
        super().__init__()
        check_specialists(resolutions, native)
        self.native = native
        self.extra = sorted(resolutions, reverse=True)
        self._teacher = [model.eval().requires_grad_(False)]  # a list: not registered, not saved
        self.copies = nn.ModuleDict({str(r): _trainable_copy(model) for r in self.extra})
        # specialists the starting weights already carry go on from where they are (training
        # them longer), the others start from the model
        self.continued = continued(start, self.extra)
        self.before = before  # how the continued ones were made
        for r in self.continued:
            self.copies[str(r)].load_state_dict(start[r])

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def train(self, mode: bool = True) -> Specialists:
        super().train(mode)
        self.teacher.eval()  # the teacher's BN keeps its running statistics
        return self

    def forward(self, x: torch.Tensor, r: int) -> torch.Tensor:
        if r == self.native:
            return self.teacher(x)
        return self.copies[str(r)](x)

    def overrides(self, r: int) -> dict[str, torch.Tensor]:
        """Every tensor of the specialist for r (a whole state_dict)."""
        return self.copies[str(r)].state_dict()

    def checkpoint_state(
        self, class_names: tuple[str, ...] | list[str] | None = None, made: str | None = None
    ) -> dict[str, torch.Tensor]:
        """The teacher's state_dict unchanged, plus each specialist as per-resolution state
        and ``made``, how they were made (:func:`recipe`)."""
        per_res = {r: self.overrides(r) for r in self.extra}
        return checkpoint_state(self.teacher.state_dict(), per_res, class_names, made)


def _trainable_copy(model: nn.Module) -> nn.Module:
    c = copy.deepcopy(model)
    c.requires_grad_(True)
    return c


def check_specialists(resolutions: list[int] | tuple[int, ...], native: int) -> None:
    """Refuse specialist resolutions that are not distinct, positive and below ``native``."""
    if not resolutions:
        raise ReswiseError("--specialists needs at least one resolution, e.g. 24,20,16")
    if len(set(resolutions)) != len(resolutions):
        raise ReswiseError(f"--specialists lists a resolution twice: {list(resolutions)}")
    bad = [r for r in resolutions if not 0 < r < native]
    if bad:
        raise ReswiseError(
            f"--specialists {bad[0]} is not below the model's native {native}: the native stage "
            f"is the model itself; pick resolutions between 1 and {native - 1}"
        )


def specialist_loss(
    logits: torch.Tensor,
    soft_teacher: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    label_smoothing: float,
) -> torch.Tensor:
    """KL to the teacher's softmax at ``temperature`` (scaled by T^2, so the gradient's size
    does not depend on T, as in Hinton et al.); half cross-entropy when labels are given."""
    t = temperature
    kl = F.kl_div((logits / t).log_softmax(1), soft_teacher, reduction="batchmean") * t * t
    if labels is None:
        return kl
    return 0.5 * kl + 0.5 * F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def specialist_labels(
    lm: Any, data: Dataset, test: Dataset | None, cfg: Any
) -> tuple[Dataset, Dataset | None, tuple[str, ...] | None, str]:
    """Specialists learn the model's own outputs: its head stays, and folder labels are used
    only with ``--labels``, mapped onto the model's classes by name (never a new head)."""
    if test is not None and not test.label_mapping:
        test, _ = align_labels(test, lm.info.class_names, num_classes=lm.info.num_classes)
    names = lm.info.class_names
    if not cfg.specialist_labels:
        return data, test, names, "labels unused: the specialists learn the model's own outputs"
    if not data.classes:
        raise ReswiseError(
            f"--labels needs class folders (DIR/<class>/<image>), but {data.name} is a flat "
            "folder; drop --labels to distil from the model alone"
        )
    data, how = align_labels(data, names, num_classes=lm.info.num_classes)
    return data, test, names, f"{how}; the specialists learn 0.5 x KL + 0.5 x cross-entropy"


def specialist_step(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor, plan: Any) -> torch.Tensor:
    """One step for every specialist on one augmented batch: the teacher sees it at the native
    resolution once, each specialist at its own, and learns the teacher's softmax there.

    ``net`` is :class:`Specialists` (or DDP around it); the loss returned is the mean over
    specialists (for the log). Each specialist backpropagates its own whole loss: the copies
    share no weight, so scaling by their number would only shrink every copy's learning rate.
    Backward per specialist: their graphs share nothing, so memory holds one.
    """
    cfg, dev = plan.cfg, plan.dev
    spec: Specialists = getattr(net, "module", net)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=plan.amp is not None)
    native = to_input(resize(xb, spec.native), plan.scale_shift, channels_last=cfg.channels_last)
    with torch.no_grad(), torch.autocast(**amp):
        soft = (spec.teacher(native).float() / cfg.temperature).softmax(1)
    labels = yb if cfg.specialist_labels else None
    loss = torch.zeros((), device=dev)
    for r in spec.extra:
        x = to_input(resize(xb, r), plan.scale_shift, channels_last=cfg.channels_last)
        with torch.autocast(**amp):
            logits = net(x, r).float()
        li = specialist_loss(logits, soft, labels, cfg.temperature, cfg.label_smoothing)
        li.backward()
        loss += li.detach() / len(spec.extra)
    return loss


def recipe(cfg: Any, native: int, init: str, continued: list[int] | tuple[int, ...] = (),
           before: str | None = None) -> str:  # fmt: skip
    """How the specialists were made, in one sentence (model card, policy files); for
    specialists that went on from earlier ones, how those were made too."""
    target = "0.5 x KL to the model's softmax + 0.5 x cross-entropy on the labels" if cfg.specialist_labels \
        else "KL to the model's softmax, labels unused"  # fmt: skip
    how = (f"specialists at {', '.join(f'{r}x{r}' for r in sorted(cfg.specialists, reverse=True))}"
           f" distilled from {init or 'the model'} at {native}x{native} on the same augmented "
           f"view ({target}, temperature {cfg.temperature}), {cfg.epochs} epochs")  # fmt: skip
    if not continued:
        return how
    went_on = ", ".join(f"{r}x{r}" for r in continued)
    return f"{how}; those at {went_on} went on from the weights' own ({before or 'made elsewhere'})"
