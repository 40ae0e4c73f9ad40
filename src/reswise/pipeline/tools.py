"""The model jobs: FLOPs report, BN recalibration and adapters written as checkpoints, and the
checked ONNX exports (one graph, or a policy's cascade)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data import ResizePolicy, load_dataset, parse_resolutions
from ..errors import ReswiseError
from ..measure.bn_recal import recalibrate_all
from ..measure.flops import flops_table
from ..models import LoadedModel, create_model
from ..records.rundir import check_destination


def flops_report(
    model: str,
    resolutions: list[int] | str,
    *,
    reference: int | None = None,
    by_operator: bool = False,
) -> dict[str, Any]:
    """Exact MACs / FLOPs / params per resolution; no data or weights needed."""
    from ..measure.flops import FlopAnalysis
    from ..measure.inference import check_resolutions

    res = parse_resolutions(resolutions)
    lm = create_model(model, pretrained=False)
    reference = reference or max(res)
    check_resolutions(lm.info, [*res, reference])
    rows = flops_table(lm.model, res, reference)
    if by_operator:
        for r in rows:
            r["by_operator"] = FlopAnalysis(lm.model, r["resolution"]).by_operator()
    return {"model": model, "reference": reference, "rows": rows}


def recalibrate_checkpoint(
    lm: LoadedModel,
    calib_root: str,
    resolutions: list[int] | str,
    out: str | Path,
    *,
    calib_size: int = 2000,
    seed: int = 0,
    policy: ResizePolicy | None = None,
) -> dict[str, Any]:
    """Write ``out``: the model plus BN statistics re-estimated at each resolution.

    ``policy``: how images become r x r inputs (default: the weights' own, ``eval_policy()``).
    """
    res = parse_resolutions(resolutions)
    # BN statistics need no labels: the user's own flat folder of images will do
    calib = load_dataset("imagefolder", calib_root, unlabelled=True, flag="--calib-root")
    policy = policy or lm.info.eval_policy()
    states = recalibrate_all(
        lm.model, calib, res, policy, lm.info.mean, lm.info.std, calib_size, seed=seed
    )
    facts = {"calib_root": calib_root, "calib_size": min(calib_size, len(calib))}
    return _write_checkpoint(lm, states, out, facts)


def adapt_checkpoint(
    lm: LoadedModel,
    train_root: str,
    resolutions: list[int] | str,
    out: str | Path,
    *,
    steps: int = 400,
    batch_size: int = 128,
    lr: float = 0.01,
    seed: int = 0,
    log: Any = None,
) -> dict[str, Any]:
    """Write ``out``: the frozen model plus one adapter (BN + classifier) per resolution."""
    from ..finetune.adapt import adapt, adapter_size, check_adapt

    res = parse_resolutions(resolutions)
    check_adapt(lm, res, steps, batch_size, lr)  # before the images: a bad flag costs a second
    data = load_dataset("imagefolder", train_root, flag="--train-root")
    states = adapt(lm, data, res, steps, batch_size, lr, seed, log=log)
    facts = {"steps": steps, "train_root": train_root, **adapter_size(lm.model)}
    return _write_checkpoint(lm, states, out, facts)


def _write_checkpoint(
    lm: LoadedModel,
    states: dict[int, dict[str, torch.Tensor]],
    out: str | Path,
    facts: dict[str, Any],
) -> dict[str, Any]:
    """The model plus ``states``; per-resolution state the weights already carry (specialists,
    private BN) stays at the resolutions ``states`` leave alone, and the result names what it
    kept and what ``states`` replaced (it was dropped without a word)."""
    from ..models._registry import sha256_file
    from ..models.checkpoint import save_checkpoint

    carried = lm.extra.per_resolution
    kinds = lm.extra.kinds(lm.model.state_dict().keys())
    kept = sorted(r for r in carried if r not in states)
    made = lm.extra.made if any(kinds[r] == "specialist" for r in kept) else None
    # the LoadedModel: its class names travel too
    save_checkpoint(lm, {**{r: carried[r] for r in kept}, **states}, out, made=made)
    return {
        "model": lm.info.name,
        "weights": lm.weights,
        "resolutions": sorted(states),
        "kept": kept,
        "replaced": {r: kinds[r] for r in sorted(states) if r in carried},
        "out": str(out),
        "sha256": sha256_file(out),
        **facts,
    }


def export_checked(
    lm: LoadedModel,
    resolution: int,
    out: str | Path,
    *,
    bake_resize_from: int | None = None,
    check_root: str | None = None,
    check_size: int = 256,
    opset: int = 17,
) -> dict[str, Any]:
    """ONNX at ``resolution`` (with the weights' own BN for it), checked on real images."""
    from ..measure.inference import check_resolutions
    from ..measure.onnx import export_onnx

    check_resolutions(lm.info, [resolution])
    check_destination(Path(out), "--out")
    images = None
    if check_root:
        data = load_dataset(  # the check compares graph and model: labels unused
            "imagefolder",
            check_root,
            limit=check_size,
            seed=0,
            unlabelled=True,
            flag="--check-root",
        )
        images = data.get(torch.arange(len(data)))
        if isinstance(images, list):  # variable sizes: bring them to the size the graph takes
            images = lm.info.eval_policy()(images, bake_resize_from or lm.info.input_size)
    result = export_onnx(
        lm, resolution, out, bake_resize_from=bake_resize_from, check_images=images, opset=opset
    )
    return {**result, "model": lm.info.name, "weights": lm.weights}


def export_policy_checked(
    policy: str | Path,
    out: str | Path,
    *,
    check_root: str | None = None,
    check_size: int = 256,
    opset: int = 17,
    require_check: bool = False,
) -> dict[str, Any]:
    """``reswise export --policy``: the cascade's graphs, checked on real images of its native
    size: ``check_root``, else the policy's own images when that folder is here. When no check
    can run, the result says why (``check_skipped``); ``require_check`` refuses instead, before
    any work."""
    from ..ship.export import export_policy
    from ..ship.policy_file import load_policy

    root = check_root or load_policy(policy)["images"]["dataset"]
    images, skipped = None, None
    if check_root or (root and Path(root).is_dir()):
        flag = "--check-root" if check_root else "the policy's images"
        data = load_dataset(
            "imagefolder", root, limit=check_size, seed=0, unlabelled=True, flag=flag
        )
        images = data.get(torch.arange(len(data)))
        if isinstance(images, list):
            if check_root:
                raise ReswiseError(
                    f"--check-root {check_root} holds images of several sizes; the cascade takes "
                    "one native size: give a folder of images of that size (the sweep's images)"
                )
            images, skipped = None, f"the policy's images {root} are of several sizes"
    elif root:
        skipped = f"the policy's images {root} are not found from {Path.cwd()}"
    else:
        skipped = "the policy names no image folder"
    if skipped:
        skipped += " (give --check-root DIR: images of the cascade's native size)"
        if require_check:
            raise ReswiseError(f"--check: no check on real images can run: {skipped}")
    result = export_policy(policy, out, check_images=images, opset=opset)
    checked = {"check_root": root} if images is not None else {"check_skipped": skipped}
    return {**result, **checked}
