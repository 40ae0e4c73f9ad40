"""The study's tables beside ours: CIFAR-10 NASNet/ResNet/MobileNet drops, ResNet-50 FLOPs column.

    reswise reproduce [--data-root ../shared/datasets/cifar10-jpeg/test] [--limit N]

The study reports, for NASNet on CIFAR-10, FLOPs drop and accuracy drop per resolution, and the
FLOPs drop of ResNet-50 on ImageNet. reswise recomputes the FLOPs exactly and measures the
accuracy drops of every CIFAR family that has weights, on CIFAR-10 (JPEG copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ReswiseError

SEED_NASNET_CIFAR = {  # resolution: (FLOPs drop %, accuracy drop points)
    28: (23.43, 1.92),
    24: (43.74, 4.34),
    20: (60.93, 13.32),
    16: (74.99, 29.58),
    12: (85.93, 52.40),
}
SEED_RESNET50_IMAGENET_FLOPS = {
    210: 3.90,
    196: 14.72,
    182: 29.26,
    168: 38.49,
    154: 49.50,
    140: 57.26,
}
CIFAR_FAMILIES = ("cifar_nasnet_a", "cifar_resnet20", "cifar_resnet56", "cifar_mobilenetv2_050")


def reproduce(
    data_root: str | Path, limit: int | None = None, progress: bool = False
) -> dict[str, Any]:
    from ..data import load_dataset
    from ..models import create_model, list_models, model_info
    from .evaluate import sweep
    from .flops import flops_table

    res = [32, *SEED_NASNET_CIFAR]
    data = None
    families = []
    for name in CIFAR_FAMILIES:
        if name not in list_models():
            continue
        info = model_info(name)
        entry: dict[str, Any] = {"model": name}
        if info.weights:
            if data is None:
                data = load_dataset("imagefolder", data_root, limit=limit)
            lm = create_model(name, pretrained=True)
            result = sweep(lm, data, res, progress=progress)
            entry.update({"weights": lm.weights, "n": result.n, "rows": result.rows})
        else:
            lm = create_model(name)
            entry.update({"weights": None, "rows": flops_table(lm.model, res, 32)})
        families.append(entry)
    if not families:
        raise ReswiseError("no CIFAR models registered")
    rn50 = flops_table(create_model("resnet50").model, [224, *SEED_RESNET50_IMAGENET_FLOPS], 224)
    return {"dataset": str(data_root), "cifar": families, "resnet50_imagenet_flops": rn50}


def format_reproduction(rep: dict[str, Any]) -> str:
    lines = [f"CIFAR-10: the study's NASNet vs reswise (accuracy on CIFAR-10 (JPEG copy), "
             f"{rep['dataset']}; whole image resized to r x r, bilinear + antialias)", ""]  # fmt: skip
    head = "| Resolution | study NASNet FLOPs drop | study NASNet acc drop |"
    sep = "|---|---|---|"
    for fam in rep["cifar"]:
        head += f" {fam['model']} FLOPs drop | {fam['model']} acc drop |"
        sep += "---|---|"
    lines += [head, sep]
    for r, (f_seed, a_seed) in SEED_NASNET_CIFAR.items():
        line = f"| {r} x {r} | {f_seed:.2f} | {a_seed:.2f} |"
        for fam in rep["cifar"]:
            row = next(x for x in fam["rows"] if x["resolution"] == r)
            acc = f"{row['acc_drop_pct']:.2f}" if "acc_drop_pct" in row else "no weights"
            line += f" {row['flops_drop_pct']:.2f} | {acc} |"
        lines.append(line)
    lines.append("")
    for fam in rep["cifar"]:
        if fam["weights"]:
            top = next(x for x in fam["rows"] if x["resolution"] == 32)["top1"]
            lines.append(f"{fam['model']}: weights {fam['weights']}, top-1 {top:.2f} % at 32x32, "
                         f"n = {fam['n']}")  # fmt: skip
    lines += ["", "ImageNet ResNet-50 FLOPs drop: the study vs reswise (torch.utils.flop_counter)",
              "", "| Resolution | study | reswise |", "|---|---|---|"]  # fmt: skip
    for row in rep["resnet50_imagenet_flops"][1:]:
        r = row["resolution"]
        lines.append(f"| {r} x {r} | {SEED_RESNET50_IMAGENET_FLOPS[r]:.2f} | "
                     f"{row['flops_drop_pct']:.2f} |")  # fmt: skip
    return "\n".join(lines)
