"""How far can a frozen-convolution adapter go at one resolution? (issue 3's "no retraining")

Trains one adapter (every BN tensor + the classifier, as `reswise adapt` does) at --res, with
more steps than `reswise adapt`'s default and optionally distilled from the same frozen model's
32x32 pass (--kd = weight of the KL term; 0 = plain cross-entropy), then prints its top-1 on the
whole CIFAR-10 (JPEG copy) test set. bf16 autocast on the CPU.

  python training/adapter_ceiling.py --model cifar_resnet20 --res 24 --steps 2000 --lr 0.02 --kd 1
"""

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F

import reswise
from reswise.adapt import adapter_keys
from reswise.data import normalizer, to_input
from reswise.train import augment

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="cifar_resnet20")
ap.add_argument("--res", type=int, default=24)
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--kd", type=float, default=0.0)
ap.add_argument("--root", default="../shared/datasets/cifar10-jpeg")
a = ap.parse_args()

lm = reswise.create_model(a.model, pretrained=True)
train = reswise.load_dataset("imagefolder", f"{a.root}/train")
test = reswise.load_dataset("imagefolder", f"{a.root}/test")
teacher = copy.deepcopy(lm.model).eval().requires_grad_(False)
student = copy.deepcopy(lm.model).train()
keys = set(adapter_keys(student))
params = [p.requires_grad_(n in keys) for n, p in student.named_parameters()]
opt = torch.optim.SGD([p for p in params if p.requires_grad], lr=a.lr, momentum=0.9, nesterov=True)
g = torch.Generator().manual_seed(a.res)
scale_shift = normalizer(lm.info.mean, lm.info.std)
t0 = time.time()
for step in range(a.steps):
    for group in opt.param_groups:
        group["lr"] = 0.5 * a.lr * (1 + math.cos(math.pi * step / a.steps))
    idx = torch.randint(0, len(train), (128,), generator=g)
    x = augment(train.images[idx], g)
    small = F.interpolate(x, size=(a.res, a.res), mode="bilinear", antialias=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = student(to_input(small, scale_shift)).float()
        loss = (1 - a.kd) * F.cross_entropy(out, train.labels[idx])
        if a.kd:
            with torch.no_grad():
                soft = F.softmax(teacher(to_input(x, scale_shift)).float(), 1)
            loss = loss + a.kd * F.kl_div(F.log_softmax(out, 1), soft, reduction="batchmean")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
student.eval()
state = {k: v.detach().clone() for k, v in student.state_dict().items() if k in keys}
top1 = reswise.sweep(lm, test, [a.res], bn_states={a.res: state}).rows[0]["top1"]
print(f"{a.model} adapter at {a.res}: {a.steps} steps, lr {a.lr}, kd {a.kd}: top-1 {top1:.2f} % "
      f"on {len(test)} CIFAR-10 (JPEG copy) test images ({time.time() - t0:.0f} s)")  # fmt: skip
