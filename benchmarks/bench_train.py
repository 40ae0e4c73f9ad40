"""Training speed: reswise's multi-resolution and specialist steps vs a plain loop, bf16 vs fp32.

    .venv/bin/python benchmarks/bench_train.py --model cifar_resnet20 --steps 20
    .venv/bin/python benchmarks/bench_train.py --resolutions 32,24,20,16 --sandwich-k all
    .venv/bin/python benchmarks/bench_train.py --specialists 24,20,16 --precision bf16,fp32

Plain: a torchvision-style loop at the native resolution, as a user would write it (same model,
batch, optimiser, label smoothing, augmentation, autocast decision and channels-last). reswise:
``reswise.finetune.train.train`` for one epoch of ``steps x batch`` in-memory images at the
training resolutions (sandwich rule, private BN). Both train on the same random uint8 images
(speed does not depend on what they show), each after one untimed warm-up run.

Images/s alone would charge the multi-resolution step for doing more work, so each loop is also
given as achieved GFLOP/s: training FLOPs per image (3 x the forward FLOPs of reswise's counter,
``reswise.measure.flops``: forward + two backward products per layer) at each resolution the
step runs, times images/s. The FLOPs the sandwich step must do are its expectation over the
draws. A specialist step (``--specialists``) is one forward of the frozen model at its native
resolution (1 x its forward FLOPs) plus one training step per specialist at its resolution.
``--precision bf16,fp32`` runs every loop under both (bf16 autocast only where the CPU has
it), so the ratio that decides ``train``'s bf16 default is measured per model and machine.
No assertion: speed is not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reswise import create_model
from reswise.data import TensorImages, normalizer, to_input
from reswise.finetune.train import TrainConfig, augment, autocast_dtype, train
from reswise.measure.flops import flops_table


def plain(args: argparse.Namespace, cfg: TrainConfig, images: torch.Tensor, labels) -> float:
    """Seconds for ``args.steps`` steps of the plain loop (after one warm-up step)."""
    lm = create_model(args.model, pretrained=False)
    net = lm.model.train()
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                          weight_decay=cfg.weight_decay)  # fmt: skip
    amp = autocast_dtype(torch.device("cpu"), cfg)
    scale_shift = normalizer(lm.info.mean, lm.info.std)
    g = torch.Generator().manual_seed(0)
    bs = cfg.batch_size

    def step(s: int) -> None:
        idx = slice(s * bs, (s + 1) * bs)
        x = to_input(augment(images[idx], g), scale_shift, channels_last=cfg.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            logits = net(x).float()
        loss = F.cross_entropy(logits, labels[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(0)
    t0 = time.perf_counter()
    for s in range(args.steps):
        step(s)
    return time.perf_counter() - t0


def multires(args: argparse.Namespace, cfg: TrainConfig, data: TensorImages, tmp: Path) -> float:
    """Seconds of training (``train``'s own wall time) for one epoch of ``args.steps`` steps
    (multi-resolution or specialists, as ``cfg`` says)."""
    warm = TensorImages(data.images[: cfg.batch_size], data.labels[: cfg.batch_size], data.classes)
    for name, d in (("warm", warm), ("timed", data)):
        lm = create_model(args.model, pretrained=False)
        # --img-size: the model trained at that size (a Lite0 fine-tuned at 96), as weights say
        lm.info = dataclasses.replace(lm.info, input_size=data.images.shape[-1])
        # train refuses specialists of a random model (worthless); the time of a step is the same
        lm.weights = "random init, for timing only"
        out = train(lm, d, cfg, tmp / f"{name}.pt", progress=False, log=lambda m: None)
    return out["wall_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--resolutions", default="32,24,20,16")
    p.add_argument("--specialists", default="24,20,16", help="'' to leave the row out")
    p.add_argument("--sandwich-k", default="1", help="a number, or 'all'")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", default="bf16", help="bf16, fp32 or both: bf16,fp32")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--img-size", type=int, help="native size (default: the model's)")
    args = p.parse_args()
    res = sorted((int(r) for r in args.resolutions.split(",")), reverse=True)
    specs = tuple(sorted((int(r) for r in args.specialists.split(",") if r), reverse=True))
    k = None if args.sandwich_k == "all" else int(args.sandwich_k)
    lm = create_model(args.model, pretrained=False)
    n, native = args.steps * args.batch_size, args.img_size or lm.info.input_size
    images = torch.randint(0, 256, (n, 3, native, native), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    labels = torch.randint(0, lm.info.num_classes, (n,), generator=torch.Generator())
    classes = [f"c{i}" for i in range(lm.info.num_classes)]
    fwd = {row["resolution"]: row["flops"] for row in flops_table(lm.model, [*res, *specs, native])}
    inner = res[1:-1]
    take = len(inner) if k is None else min(k, len(inner))
    # expected per step: the two ends always, each inner resolution with probability take/len
    step_flops = 3 * (fwd[res[0]] + (fwd[res[-1]] if len(res) > 1 else 0)
                      + sum(fwd[r] for r in inner) * (take / len(inner) if inner else 0))  # fmt: skip
    plain_flops = 3 * fwd[native]
    spec_flops = fwd[native] + 3 * sum(fwd[r] for r in specs)
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps, {torch.get_num_threads()} "
          f"threads, {'NCHW' if args.no_channels_last else 'channels-last'}")  # fmt: skip
    print("| loop | precision | resolutions per step | train GFLOPs / image | images/s | GFLOP/s |")
    print("|---|---|---|---:|---:|---:|")
    ips: dict[tuple[str, str], float] = {}
    for prec in args.precision.split(","):
        base = dict(epochs=1, batch_size=args.batch_size, lr=0.01, warmup_epochs=0.0,
                    channels_last=not args.no_channels_last, bf16=prec == "bf16")  # fmt: skip
        cfg = TrainConfig(**base, train_resolutions=tuple(res), sandwich_k=k)
        amp = "bf16" if autocast_dtype(torch.device("cpu"), cfg) is not None else "fp32"
        data = TensorImages(images, labels, classes)
        rows = [("plain", str(native), plain_flops, n / plain(args, cfg, images, labels))]
        with tempfile.TemporaryDirectory() as tmp:
            what = f"{res[0]}+{res[-1]}" + (f"+{take} of {inner}" if inner else "")
            t = multires(args, cfg, data, Path(tmp))
            rows.append((f"multi-res (sandwich k={args.sandwich_k})", what, step_flops, n / t))
            if specs:
                t = multires(args, TrainConfig(**base, specialists=specs), data, Path(tmp))
                what = f"teacher {native} fwd + " + "+".join(map(str, specs))
                rows.append(("specialists", what, spec_flops, n / t))
        for loop, what, fl, v in rows:
            ips[loop, amp] = v
            print(f"| {loop} | {amp} | {what} | {fl / 1e9:.4f} | {v:.1f} | {v * fl / 1e9:.2f} |")
    for (loop, amp), v in ips.items():
        base_v = ips.get(("plain", amp))
        if loop != "plain" and base_v:
            print(f"{amp}: images/s, {loop} / plain: {v / base_v:.3f}")
        if amp == "bf16" and ("fp32" in {a for _, a in ips}) and (loop, "fp32") in ips:
            print(f"{loop}: images/s, bf16 / fp32: {v / ips[loop, 'fp32']:.3f}")


if __name__ == "__main__":
    main()
