"""The chosen cascade as a module: ``reswise.AdaptiveClassifier``.

    policy = reswise.policy_file.load_policy("policy.json")
    net = reswise.AdaptiveClassifier(policy, reswise.create_model("cifar_resnet20", ...))
    logits, resolution = net(images)  # B x 3 x S x S (native size): uint8, or float in [0, 1]

The whole batch runs at the first resolution; the images whose confidence is below the stage's
threshold are gathered and run at the next, and their answers scattered back. Resizing is the
sweep's own (:class:`reswise.data.ResizePolicy`), the networks are built as the sweep built them
(BN folded, channels-last) and confidence is :func:`reswise.records.confidence`, so
per image it answers what the records-based simulation of the same policy says.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..choose.compare import best_of
from ..choose.policies import calib_heldout_split
from ..data import ResizePolicy, normalizer, to_input
from ..errors import ReswiseError
from ..measure.inference import fold_for_inference
from ..measure.progress import weights_sha256
from ..models import LoadedModel, load_model
from ..records import SweepResult, confidence
from ..records.rundir import check_destination
from .policy_file import (
    build_policy,
    check_policy,
    load_bn_states,
    load_policy,
    load_quant,
    precision_of,
    save_policy,
)
from .runtime import check_unit_range

TOPK = 2  # what every signal reads: top-1 and top-2 probabilities


class AdaptiveOutput(NamedTuple):
    logits: torch.Tensor  # B x classes, from the stage that answered each image
    resolution: torch.Tensor  # int64 B: the resolution that answered


def softmax_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k softmax probabilities and entropy, computed as the sweep computes its records."""
    logp = torch.log_softmax(logits.float(), 1)
    p = logp.exp()
    return p.topk(min(TOPK, p.shape[1]), 1).values, -(p * logp).sum(1)


def state_sha256(lm: LoadedModel) -> str:
    """sha256 of the weights' values: the state_dict and any per-resolution state they carry
    (the definition a sweep records as ``weights_sha256``)."""
    return weights_sha256(lm.model, lm.extra.per_resolution)


def weights_source(run: SweepResult) -> dict[str, Any]:
    """How to load the weights a run was made with: ``pretrained`` tag or ``checkpoint`` path."""
    name = run.weights.split(" + ")[0]
    if name == "random init":
        return {"random_init": True}
    if name.startswith(f"{run.model}."):
        tag = name[len(run.model) + 1 :]
        return {"pretrained": True if tag == "pretrained" else tag}
    # the path as the sweep was given it; the policy is used from other folders (latency,
    # export, a server): keep it absolute when it is found from here
    return {"checkpoint": str(Path(name).resolve()) if Path(name).is_file() else name}


def load_model_for(policy: dict[str, Any], lm: LoadedModel | None = None) -> LoadedModel:
    """The policy's model (``lm``, or loaded from where the policy says), its weights checked."""
    if lm is None:
        lm = load_model(policy["model"], **policy["weights"]["source"])
    want, have = policy["weights"]["sha256"], state_sha256(lm)
    if lm.info.name != policy["model"] or want != have:
        raise ReswiseError(
            f"policy {policy.get('path', '')} was chosen for {policy['model']} weights "
            f"{policy['weights']['name']} (sha256 {want[:16]}), but the model given is "
            f"{lm.info.name} {lm.weights} (sha256 {have[:16]}); load those weights, or choose "
            "again for these with reswise cascade --from RUN --save"
        )
    return lm


def check_flops(policy: dict[str, Any], lm: LoadedModel) -> None:
    """Refuse a policy whose FLOPs are not the model's, counted as the sweep counted them: its
    FLOPs-saved figures are computed from them (an edited entry printed "FLOPs saved 82.6 %",
    true: 57.6 %)."""
    from ..measure.flops import FlopAnalysis
    from .schema_errors import where

    for r, claimed in policy["flops"].items():
        have = FlopAnalysis(lm.model, int(r)).total()
        if have != claimed:
            raise ReswiseError(
                f"{policy.get('path', 'the policy')}: {where(['flops', r])} is {claimed}, but "
                f"{lm.info.name} counts {have} FLOPs at {r} x {r} (as its sweep did): edited by "
                "hand? write it again with reswise cascade --from RUN --save POLICY.json"
            )


def resize_policy(pre: dict[str, Any], r: int | None = None) -> ResizePolicy:
    """The resize of stage ``r``: the crop ``--crop-pct auto`` chose there, else the policy's."""
    crop = (pre.get("crop_pct_by_res") or {}).get(str(r), pre["crop_pct"])
    return ResizePolicy(pre["kind"], crop, pre["interpolation"], pre["antialias"])


def _run_resize(run: SweepResult, lm: LoadedModel) -> ResizePolicy:
    """The ResizePolicy the sweep used: the one whose description its results recorded."""
    own = lm.info.eval_policy()
    found = [
        ResizePolicy(own.kind, crop, run.interpolation, aa)
        for aa in (True, False)
        for crop in dict.fromkeys([own.crop_pct, *_crops_named(run.policy)])
    ]
    # a --crop-pct auto run names its base crop so (choose/crops.py)
    auto = "round(r / crop_pct(r))"
    for p in found:
        if run.policy.partition(";")[0] in (
            p.describe(),
            p.describe().replace(f"round(r / {p.crop_pct})", auto),
        ):
            return p
    raise ReswiseError(
        f"cannot tell which resize run {run.directory} used ('{run.policy}'); rerun its sweep "
        "with this reswise"
    )


def _crops_named(text: str) -> list[float]:
    part = text.partition("round(r / ")[2].partition(")")[0]
    try:
        return [float(part)] if part else []
    except ValueError:
        return []


def save_choice(
    run: SweepResult, found: dict[str, Any], budget: Any, path: str | Path
) -> dict[str, Any]:
    """Write the policy file for ``found`` (a select or cascade result) chosen from ``run``."""
    check_destination(Path(path), "--save")  # before loading anything: a bad path costs nothing
    source = weights_source(run)
    lm = load_model(run.model, **source)
    chain = [int(r) for r in found.get("chain", [found.get("resolution")])]
    use_recal = {r: False for r in chain}
    if run.bn is not None:
        calib, _ = calib_heldout_split(run.n, budget.calib_frac, budget.seed)
        use_recal.update(best_of(run.records, run.bn.records, calib, run.reference)[1])
    prec = precision_of(found)
    # int8 rows come from the plain pass (the weights' own BN): their stage keeps that BN
    bn_source = {
        r: "recalibrated"
        if use_recal.get(r) and p == "fp32"
        else ("weights" if lm.extra.get(r) else "shared")
        for r, p in zip(chain, prec)
    }
    resize = _run_resize(run, lm)
    pre = {
        "kind": resize.kind,
        "crop_pct": resize.crop_pct,
        "interpolation": resize.interpolation,
        "antialias": resize.antialias,
        "mean": list(lm.info.mean),
        "std": list(lm.info.std),
        "input_size": lm.info.input_size,
        "fast_path": run.fast_path,
        "crop_pct_by_res": run.meta.get("crop_pct_by_res"),  # --crop-pct auto's choice
    }
    weights = {"name": run.weights, "source": source, "sha256": state_sha256(lm)}
    policy = build_policy(
        run,
        found,
        budget.kwargs(),
        weights=weights,
        preprocessing=pre,
        bn_source=bn_source,
        class_names=list(lm.info.class_names) if lm.info.class_names else None,
    )
    policy.update(stage_state(lm, bn_source))
    states = run.bn.states if run.bn is not None else None
    quant = {r: _quant_kept(run, r) for r, p in zip(chain, prec) if p == "int8"}
    out = save_policy(policy, path, states, quant)
    return {
        "policy_file": str(out),
        "bn": policy["bn"],
        "stage_state": policy["stage_state"],
        "stage_precision": {str(r): p for r, p in zip(chain, prec)},
        "weights_sha256": weights["sha256"],
    }


def stage_state(lm: LoadedModel, bn_source: dict[int, str]) -> dict[str, Any]:
    """What each stage runs: the model's own weights (``model``; its BN maybe recalibrated,
    see ``bn``) or the weights' per-resolution ``specialist``, ``adapter`` or ``bn`` state,
    and how that state was made when the weights say (policy fields ``stage_state``,
    ``state_made``)."""
    kinds = lm.extra.kinds(lm.model.state_dict().keys())
    state = {str(r): kinds[r] if src == "weights" else "model" for r, src in bn_source.items()}
    made = lm.extra.made if any(v != "model" for v in state.values()) else None
    return {"stage_state": state, **({"state_made": made} if made else {})}


def _quant_kept(run: SweepResult, r: int) -> dict[str, Any]:
    """What rebuilds the sweep's int8 graph at ``r``: settings, ranges and the graph's sha256."""
    import json

    stage = run.meta.get("quant", {}).get("stages", {}).get(str(r))
    ranges = Path(run.directory or ".") / stage["ranges"] if stage else None
    if ranges is None or not ranges.is_file():
        raise ReswiseError(
            f"the run {run.directory} kept no quantization parameters for {r}/int8; rerun the "
            "sweep with --precision fp32,int8"
        )
    return {
        "settings": stage["settings"],
        "ranges": json.loads(ranges.read_text()),
        "graph_sha256": stage["graph_sha256"],
        "agreement_calibration": stage["agreement"],
    }


def int8_stages(
    policy: dict[str, Any], lm: LoadedModel, bn: dict[int, dict[str, torch.Tensor]]
) -> dict[int, Path]:
    """Per int8 stage, the graph the sweep ran (resized pixels, float 0..255, in; logits out:
    normalisation + the int8 network), rebuilt from the policy's quantization parameters."""
    from ..measure.backends import cached_graph
    from ..measure.quantize import rebuild_int8, with_normalize

    quant = load_quant(policy)
    out = {}
    for r, stage in quant.items():
        net = lm.model
        if r in bn:
            net = copy.deepcopy(lm.model)
            net.load_state_dict(bn[r], strict=False)
        graph = rebuild_int8(cached_graph(net, lm.info.name, r), stage)
        out[r] = with_normalize(graph, lm.info.mean, lm.info.std)
    return out


def stage_bn(policy: dict[str, Any], lm: LoadedModel) -> dict[int, dict[str, torch.Tensor]]:
    """Per stage, the BN tensors to load: the weights' own per-resolution state or the sweep's
    recalibrated statistics; a stage on the shared BN has none."""
    recal = load_bn_states(policy)
    out = {}
    for r in policy["chain"]:
        src = policy["bn"][str(r)]
        if src == "recalibrated":
            out[r] = {k: torch.from_numpy(np.array(v)) for k, v in recal[r].items()}
        elif src == "weights":
            state = lm.extra.get(r)
            if state is None:
                raise ReswiseError(
                    f"the policy's {r}x{r} stage uses the weights' own BN for {r}, which these "
                    "weights do not carry; load the weights the policy names"
                )
            out[r] = state
    return out


def stage_nets(
    lm: LoadedModel,
    chain: list[int],
    bn: dict[int, dict[str, torch.Tensor]],
    fast: bool = True,
    device: str = "cpu",
) -> list[nn.Module]:
    """One eval-mode network per stage, with its BN loaded; stages on the shared BN share one.

    ``fast``: BN folded into the convolutions and channels-last on CPU, as the sweep's eager
    path runs, so the logits are the ones the records were made from.
    """
    shared: nn.Module | None = None
    out = []
    for r in chain:
        net = lm.model
        if r in bn:
            net = copy.deepcopy(lm.model)
            net.load_state_dict(bn[r], strict=False)
        elif shared is not None:
            out.append(shared)
            continue
        net = fold_for_inference(net, device == "cpu")[0] if fast else copy.deepcopy(net)
        net = net.eval().to(device)
        if r not in bn:
            shared = net
        out.append(net)
    return out


class AdaptiveClassifier(nn.Module):
    """A resolution cascade over one model, built from a policy file; ``forward(images)``."""

    def __init__(
        self,
        policy: dict[str, Any] | str | Path,
        model: LoadedModel | None = None,
        *,
        device: str = "cpu",
        fast: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(policy, (str, Path)):
            policy = load_policy(policy)
        else:  # a dict built or edited in Python gets the same check as a file
            policy = check_policy(policy, policy.get("path", "the policy given"))
        lm = load_model_for(policy, model)
        self.policy = policy
        self.chain = [int(r) for r in policy["chain"]]
        self.thresholds = [float(t) for t in policy["thresholds"]]
        self.signal = policy["signal"] or "max_softmax"
        pre = policy["preprocessing"]
        self.scale_shift = normalizer(tuple(pre["mean"]), tuple(pre["std"]))
        self.channels_last = fast and device == "cpu"
        bn = stage_bn(policy, lm)
        self.stages = nn.ModuleList(stage_nets(lm, self.chain, bn, fast, device))
        self.device = torch.device(device)
        # int8 stages run the sweep's own int8 graph in ONNX Runtime (torch has no such kernels)
        self.precision = policy.get("precision") or ["fp32"] * len(self.chain)
        self.sessions: dict[int, Any] = {}
        if "int8" in self.precision:
            if not device.startswith("cpu"):
                raise ReswiseError(
                    "the policy has int8 stages, which run on ONNX Runtime's CPU provider; use "
                    "device='cpu'"
                )
            from ..measure.backends import ort_session

            graphs = int8_stages(policy, lm, bn)
            threads = torch.get_num_threads()
            self.sessions = {
                i: ort_session(graphs[r], threads)
                for i, (r, p) in enumerate(zip(self.chain, self.precision))
                if p == "int8"
            }

    def stage(self, i: int, images: torch.Tensor) -> torch.Tensor:
        """Logits of stage ``i`` for native-size images: resize, normalise, run."""
        r = self.chain[i]
        resize = resize_policy(self.policy["preprocessing"], r)
        # the records were resized by torch's CPU uint8 kernel; the GPU gets resized batches
        images = images.cpu()
        if i in self.sessions:  # int8: pixels into the sweep's own graph, normalised inside
            pixels = resize(images if images.dtype == torch.uint8 else images * 255.0, r)
            feed = pixels.float().contiguous().numpy()
            return torch.from_numpy(self.sessions[i].run(None, {"pixels": feed})[0]).float()
        if images.dtype == torch.uint8:
            x = to_input(resize(images, r), self.scale_shift, self.channels_last)
        else:  # floats in [0, 1]: resized as floats, so not rounded to uint8 as the records were
            x = to_input(resize(images * 255.0, r), self.scale_shift, self.channels_last)
        return self.stages[i](x.to(self.device)).float()

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The policy's confidence signal, by the records' own definition."""
        return confidence(*softmax_stats(logits), self.signal)

    def check_images(self, images: torch.Tensor) -> None:
        """Refuse, in one line, what the stages would read wrongly: a shape other than
        ``B x 3 x S x S`` at the policy's native size (any size for crop policies), a dtype
        other than uint8 (0..255) or floating point (in [0, 1]), non-finite or out-of-range
        floats. Integer and boolean
        tensors used to be taken as floats in [0, 1] and float tensors holding 0..255 went
        unchecked: both near-white images, 16-25 % agreement with the uint8 answers on 64 real
        CIFAR-10 test images."""
        s = int(self.policy["preprocessing"]["input_size"])
        if not isinstance(images, torch.Tensor):
            raise ReswiseError(
                f"images must be a torch tensor B x 3 x {s} x {s}, got {type(images).__name__}; "
                "use torch.from_numpy, or reswise.ship.runtime for numpy arrays"
            )
        # a crop policy resizes from whatever size the image has, as the sweep did (ImageNet's
        # originals); a whole-image policy was measured on native-size images only
        any_size = self.policy["preprocessing"]["kind"] == "crop"
        if (
            images.dim() != 4
            or images.shape[1] != 3
            or not (any_size or tuple(images.shape[2:]) == (s, s))
        ):
            size = "H x W" if any_size else f"{s} x {s}"
            raise ReswiseError(
                f"images must be B x 3 x {size} (as swept), got shape {tuple(images.shape)}; "
                f"give {'channels-first' if any_size else f'{s} x {s} channels-first'} images"
            )
        if images.dtype == torch.uint8:
            return
        if not images.is_floating_point():
            raise ReswiseError(
                f"images must be uint8 (0..255) or floating point in [0, 1], got {images.dtype}; "
                "convert them with .to(torch.uint8) if they hold 0..255, or .float() / 255"
            )
        bad = int((~torch.isfinite(images)).sum())
        if bad:
            raise ReswiseError(
                f"images hold {bad} values that are not finite (NaN or inf); fix them at the "
                "source before classifying"
            )
        if images.numel():
            check_unit_range(*(float(v) for v in torch.aminmax(images)))

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> AdaptiveOutput:
        if isinstance(images, torch.Tensor) and images.dtype in (torch.float16, torch.bfloat16):
            images = images.float()  # torch's CPU resize has no 16-bit kernels; exact in fp32
        self.check_images(images)
        images = images.cpu()  # resized on the CPU, as the records were (see stage)
        n = len(images)
        idx = torch.arange(n)
        logits: torch.Tensor | None = None
        res = torch.zeros(n, dtype=torch.int64)
        for i, r in enumerate(self.chain):
            out = self.stage(i, images if i == 0 else images[idx])
            if logits is None:
                logits = out.new_empty((n, out.shape[1]))
            if i == len(self.chain) - 1:  # the last stage answers every image still open
                logits[idx.to(out.device)], res[idx] = out, r
                break
            stop = (self.scores(out) >= self.thresholds[i]).cpu()
            logits[idx[stop].to(out.device)], res[idx[stop]] = out[stop.to(out.device)], r
            idx = idx[~stop]
            if len(idx) == 0:
                break
        assert logits is not None
        return AdaptiveOutput(logits, res)
