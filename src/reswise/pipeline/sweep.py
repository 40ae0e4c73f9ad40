"""The sweep job (``reswise sweep``): images -> records in a run folder, resumable, with the
BN-recalibrated pass, latency columns and ``--crop-pct auto``.

    import reswise
    run = reswise.run_sweep(reswise.SweepConfig(model="cifar_resnet20", dataset="imagefolder",
                            data_root="../shared/datasets/cifar10-jpeg/test",
                            resolutions=[32, 28, 24, 20, 16, 12], out="runs/r20"))
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..choose.crops import (
    CROPS_DIR,
    assemble,
    choose_crops,
    crop_grid,
    crop_table,
    crop_tag,
    same_images,
)
from ..choose.policies import calib_heldout_split
from ..data import Dataset, ResizePolicy, load_data, load_dataset, parse_resolutions
from ..errors import ReswiseError
from ..measure import distributed
from ..measure.bn_recal import recalibrate_all
from ..measure.flops import flops_table
from ..measure.inference import available_cpus, torch_threads
from ..models import LoadedModel, load_model, model_info
from ..models._registry import shared_root
from ..records import BNPass, SweepResult, jsonable, summarize, write_atomic
from ..records.report import write_report
from ..records.rundir import interruptible, owned
from .precision import parse_precisions, precision_pass, quant_options


@dataclass
class SweepConfig:
    """Everything that decides a sweep; field names are the CLI's flags (``--data-root``...)."""

    model: str
    dataset: str
    resolutions: list[int] | str
    data_root: str | None = None
    reference: int | None = None
    checkpoint: str | None = None
    pretrained: bool | str | None = None  # None: the default weights unless a checkpoint is given
    random_init: bool = False
    split: str = "test"  # cifar10 only
    limit: int | None = None  # a seeded random subset of this many images
    seed: int = 0  # for --limit subsets and calibration splits
    on_corrupt: str = "skip"
    interpolation: str | None = None  # None: the weights' own
    antialias: bool = True
    crop_pct: float | str | None = None  # None: the weights' own; "auto": reswise.choose.crops
    crop_grid: list[float] | str | None = None  # crops "auto" tries (None: crops.DEFAULT_GRID)
    batch_size: int | None = None
    device: str = "cpu"
    fast: bool = True  # BN folded into convolutions, channels-last
    backend: str = "auto"  # eager | compile | onnxruntime | auto (reswise.measure.backends)
    progress: bool = False
    out: str | None = None  # run directory; default runs/<model>_<data>
    recalibrate_bn: bool = False  # a second pass with BN statistics re-estimated per resolution
    calib_root: str | None = None  # unlabeled images for BN statistics
    calib_size: int | None = 2000
    calib_split: bool = False  # BN statistics from the calibration part of the evaluation images
    calib_frac: float = 0.5
    latency: bool = False  # add measured batch-1 latency per resolution
    threads: int | None = None  # intra-op threads; default: the CPUs this process may use
    save_every_s: float = 30.0  # how often progress is saved (a killed run loses at most this)
    class_map: str | None = None  # JSON {folder: model class name or index}
    # stages beside fp32 ("fp32,int8[,bf16]"); None: fp32 only and no ONNX Runtime timing.
    # int8 is calibrated on the calibration part of the calib_frac/seed split (pipeline/precision)
    precision: str | list[str] | None = None
    # int8 settings tried per stage on the calibration half: "auto" = every method with and
    # without float ends (measure/quantize); a method name ("minmax") = that one, all int8
    quant: str = "auto"

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        data = Path(self.data_root).name if self.data_root else self.dataset
        return Path("runs") / f"{self.model.replace(':', '_')}_{data}"


def default_data_root(*parts: str) -> str:
    """Where the commands of README and docs/usage.md find data: ``$RESWISE_SHARED`` or the sibling ``shared``."""
    return str(shared_root().joinpath("datasets", *parts))


# ---------------------------------------------------------------- loading
def policy_for(cfg: SweepConfig, lm: LoadedModel) -> ResizePolicy:
    """The weights' own evaluation preprocessing with the user's overrides."""
    return lm.info.eval_policy(
        crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, antialias=cfg.antialias
    )


def load_calib(cfg: SweepConfig, data: Dataset) -> tuple[Dataset, str, dict[str, Any] | None]:
    """Unlabeled BN-calibration images: never the images a policy reports on.

    Returns the images, a description for reports, and, for ``calib_split``, the split they
    came from (so a later ``--from RUN`` can check it reports on the other part).
    """
    if cfg.calib_size is not None and cfg.calib_size <= 0:
        raise ReswiseError(f"--calib-size must be positive, got {cfg.calib_size}")
    if cfg.calib_split:
        if cfg.calib_root:
            raise ReswiseError("give --calib-root DIR or --calib-split, not both")
        # the part policies choose on; labels are never read, the held-out part never touched
        idx, _ = calib_heldout_split(len(data), cfg.calib_frac, cfg.seed)
        desc = (
            f"{cfg.data_root or cfg.dataset} (calibration part: {cfg.calib_frac:.0%}, "
            f"seed {cfg.seed})"
        )
        split = {"calib_frac": cfg.calib_frac, "seed": cfg.seed, "n": len(data)}
        return data.subset(torch.as_tensor(idx)), desc, split
    if not cfg.calib_root:
        raise ReswiseError(
            "--recalibrate-bn needs --calib-root DIR (unlabeled images, e.g. a train split) "
            "or --calib-split (the calibration part of the evaluation images)"
        )
    if cfg.data_root and Path(cfg.calib_root).resolve() == Path(cfg.data_root).resolve():
        raise ReswiseError(
            "--calib-root is the evaluation set; use other images (e.g. the train split) or "
            "--calib-split (only the calibration part of the evaluation images)"
        )
    calib = load_dataset(
        "imagefolder", cfg.calib_root, on_corrupt="skip", unlabelled=True, flag="--calib-root"
    )
    return calib, cfg.calib_root, None


# ---------------------------------------------------------------- the sweep
def run_sweep(cfg: SweepConfig, write: bool = True) -> SweepResult | None:
    """The sweep (+ BN-recalibrated pass, + latency columns), written to ``cfg.out_dir()``.

    The run directory is held by this process (a second writer is refused), checked writable
    before any work, and keeps its progress files until the results are written: a run that
    is killed, interrupted or hits a full disk resumes where it stopped. Returns None on a
    non-zero torchrun rank (rank 0 gathers the records).
    """
    refuse_unused_flags(cfg)
    if cfg.crop_pct == "auto":  # one sweep per crop of a grid, then the choice (choose/crops.py)
        return run_auto_crop(cfg, write)
    res = parse_resolutions(cfg.resolutions)
    parse_precisions(cfg.precision)  # a bad --precision or --quant fails before any pass
    quant_options(cfg.quant)
    out = cfg.out_dir()
    rank = distributed.world()[0]
    with owned(out, rank), interruptible(), torch_threads(cfg.threads or available_cpus()):
        lm = load_model(
            cfg.model,
            pretrained=cfg.pretrained,
            checkpoint=cfg.checkpoint,
            random_init=cfg.random_init,
        )
        data = load_data(cfg, lm)
        policy = policy_for(cfg, lm)
        kw = dict(
            policy=policy,
            batch_size=cfg.batch_size,
            fast=cfg.fast,
            device=cfg.device,
            backend=cfg.backend,
            progress=cfg.progress,
            keep_progress=True,
            save_every_s=cfg.save_every_s,
        )
        result = distributed.sweep(
            lm, data, res, cfg.reference, checkpoint_path=out / "progress.npz", **kw
        )
        if cfg.recalibrate_bn:
            bn = _bn_pass(cfg, lm, data, res, policy, result, out, kw)
            if result is not None:
                result.bn = bn
        if cfg.precision is not None:
            precision_pass(cfg, lm, data, res, policy, result, out, kw)
        if result is not None:
            if cfg.latency:
                _add_latency(cfg, lm, res, result)
            result.directory = str(out)
            result.meta["threads"] = torch.get_num_threads()
            result.meta["labels"] = data.label_mapping
            result.meta["dataset_kind"] = cfg.dataset
            result.meta["images_limit"] = cfg.limit  # a --limit subset is drawn with --seed:
            result.meta["images_seed"] = cfg.seed  # a policy needs both to find its images again
            if write:
                _save_or_explain(result, out)
        for p in out.glob("progress*.npz"):  # the results are safe: progress has done its job
            p.unlink(missing_ok=True)
    return result


def _save_or_explain(result: SweepResult, out: Path) -> None:
    """Write the results; when that fails, say what is really kept (a full disk may have
    refused the progress files too)."""
    try:
        save_run(result, out)
    except OSError as e:
        kept = sorted(p.name for p in out.glob("progress*.npz"))
        if kept:
            what = (
                f"the records saved so far are kept in {', '.join(kept)} in {out}: free space or "
                "fix the folder, then rerun the same command to resume from them"
            )
        else:
            what = (
                "nothing could be kept (no progress file could be written either): free space "
                "or fix the folder, then rerun the same command to evaluate again"
            )
        raise ReswiseError(
            f"cannot write the results into {out} ({e.strerror or e}); {what}"
        ) from None


def _bn_pass(
    cfg: SweepConfig,
    lm: LoadedModel,
    data: Dataset,
    res: list[int],
    policy: ResizePolicy,
    plain: SweepResult | None,
    out: Path,
    kw: dict[str, Any],
) -> BNPass | None:
    calib, calib_desc, calib_split = load_calib(cfg, data)
    all_res = list(dict.fromkeys([cfg.reference or max(res), *res]))
    states = recalibrate_all(
        lm.model, calib, all_res, policy, lm.info.mean, lm.info.std, cfg.calib_size, seed=cfg.seed
    )
    bn = distributed.sweep(
        lm,
        data,
        res,
        cfg.reference,
        bn_states=states,
        checkpoint_path=out / "progress_bn.npz",
        **kw,
    )
    if plain is None or bn is None:
        return None
    flops = flops_table(lm.model, bn.records.resolutions, bn.reference)
    seconds = np.array(bn.timings["eval_s_by_res"])
    rows = summarize(
        bn.records, bn.reference, flops, seconds, ref_correct=plain.records.correct(plain.reference)
    )
    arrays = {r: {k: v.numpy() for k, v in s.items()} for r, s in states.items()}
    return BNPass(
        bn.records,
        rows,
        calib_desc,
        min(cfg.calib_size or len(calib), len(calib)),
        calib_split,
        arrays,
    )


def _add_latency(cfg: SweepConfig, lm: LoadedModel, res: list[int], result: SweepResult) -> None:
    from ..measure.latency import measure_latency

    lat = measure_latency(
        lm, res, [1], reference=result.reference, device=cfg.device, fast=cfg.fast
    )
    by_res = {row["resolution"]: row for row in lat}
    for row in result.rows:
        m = by_res[row["resolution"]]
        row.update(
            {
                "latency_ms": m["median_ms"],
                "latency_drop_pct": m["latency_drop_pct"],
                "latency_disagrees": m["disagrees"],
            }
        )


def save_run(run: SweepResult, out: str | Path) -> dict[str, str]:
    """results.json, results.csv, report.md, accuracy_vs_flops.png and the records."""
    out = Path(out)
    files = run.save(out)
    files.update(write_report(run, out))
    return {k: str(v) for k, v in files.items()}


def load_run(run_dir: str | Path) -> SweepResult:
    """A finished sweep's run directory (no model pass)."""
    run = SweepResult.load(run_dir)
    run.directory = str(run_dir)
    return run


def refuse_unused_flags(cfg: SweepConfig) -> None:
    """Flags this sweep would ignore are refused: each ran without effect, exit 0."""
    if cfg.split != "test" and cfg.dataset != "cifar10":
        raise ReswiseError(
            f"--split picks a CIFAR-10 split (--dataset cifar10); with --dataset {cfg.dataset} "
            "the folder is the split: drop --split, or point --data-root at the other folder"
        )
    if cfg.crop_grid is not None and cfg.crop_pct != "auto":
        raise ReswiseError(
            "--crop-grid is the grid --crop-pct auto tries: add --crop-pct auto or drop --crop-grid"
        )
    for flag, given in (("--calib-root", cfg.calib_root), ("--calib-split", cfg.calib_split)):
        if given and not cfg.recalibrate_bn:
            raise ReswiseError(
                f"{flag} is for --recalibrate-bn (the images BN statistics are taken from): "
                f"add --recalibrate-bn or drop {flag}"
            )
    wants_int8 = "int8" in str(cfg.precision or "")
    if cfg.quant != "auto" and not wants_int8:
        raise ReswiseError(
            f"--quant calibrates int8 stages: add --precision fp32,int8 or drop --quant {cfg.quant}"
        )
    refuse_unused_crop(cfg.model, cfg.crop_pct, model_info(cfg.model).task)


# ---------------------------------------------------------------- --crop-pct auto
def refuse_unused_crop(model: str, crop_pct: float | str | None, task: str) -> None:
    """A centre crop on a model that resizes the whole image would change nothing (the policy
    has no crop): refused, not ignored."""
    if crop_pct in (None, "auto") or task == "imagenet" or float(crop_pct) == 1.0:
        return
    raise ReswiseError(
        f"--crop-pct {float(crop_pct):g} sets a centre crop, but {model} resizes the whole image "
        "to r x r (no crop); drop --crop-pct"
    )


def _refuse_auto_crop(cfg: Any, task: str) -> None:
    if task != "imagenet":
        raise ReswiseError(
            f"--crop-pct auto chooses a centre crop, but {cfg.model} resizes the whole image "
            "(no crop); drop --crop-pct"
        )
    if cfg.recalibrate_bn:
        raise ReswiseError(
            "--crop-pct auto and --recalibrate-bn are not combined; run two sweeps (one with each)"
        )
    if getattr(cfg, "precision", None):
        raise ReswiseError(
            "--crop-pct auto and --precision are not combined; sweep each crop with --crop-pct C "
            "--precision ... and compare the runs with reswise frontier"
        )


def run_auto_crop(cfg: Any, write: bool = True) -> SweepResult | None:
    """``reswise sweep --crop-pct auto``: one sweep per crop of the grid, then the choice."""
    info = model_info(cfg.model)
    _refuse_auto_crop(cfg, info.task)
    default = float(info.crop_pct)
    grid = crop_grid(default, getattr(cfg, "crop_grid", None))
    calib_heldout_split(2, cfg.calib_frac, cfg.seed)  # a bad --calib-frac fails before any pass
    split = {"calib_frac": cfg.calib_frac, "seed": cfg.seed}
    out = cfg.out_dir()
    runs: dict[float, SweepResult] = {}
    with owned(out, distributed.world()[0]):
        for c in grid:
            sub = dataclasses.replace(
                cfg,
                crop_pct=c,
                crop_grid=None,
                out=str(out / CROPS_DIR / crop_tag(c)),
                latency=cfg.latency and c == default,  # latency does not depend on the crop
            )
            run = run_sweep(sub, write=write)
            if run is not None:
                runs[c] = run
    if not runs:  # a non-zero torchrun rank: rank 0 assembles
        return None
    first = same_images(runs)
    split["n"] = first.n
    choice = choose_crops(
        {c: r.records for c, r in runs.items()},
        default,
        calib_frac=cfg.calib_frac,
        seed=cfg.seed,
    )
    result = assemble(runs, default, choice, split)
    result.directory = str(out)
    if write:
        with owned(out, 0):
            save_run(result, out)
            body = f"# {cfg.model}: --crop-pct auto\n\n{crop_table(result)}\n"
            write_atomic(out / "crops.md", body.encode())
            meta = json.dumps(result.meta["crop_auto"], indent=1, default=jsonable)
            write_atomic(out / "crops.json", (meta + "\n").encode())
    return result
