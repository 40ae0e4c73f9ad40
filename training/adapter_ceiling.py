"""How far can a frozen-convolution adapter go at one resolution? (issue 3's "no retraining")

Trains one adapter with `reswise.adapt.adapt_one` (every BN tensor + the classifier, the
convolutions frozen, as `reswise adapt` does) at --res, with more steps than `reswise adapt`'s
default and optionally distilled from the same frozen model's 32x32 pass (--distill = share of
the loss on the KL term; 0 = plain cross-entropy), then prints its top-1 on the whole CIFAR-10
(JPEG copy) test set.

  python training/adapter_ceiling.py --model cifar_resnet20 --res 24 --steps 2000 --lr 0.02 --distill 1
"""

import argparse
import time

import reswise
from reswise.finetune.adapt import adapt_one

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="cifar_resnet20")
ap.add_argument("--res", type=int, default=24)
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--distill", type=float, default=0.0)
ap.add_argument("--root", default="../shared/datasets/cifar10-jpeg")
a = ap.parse_args()

lm = reswise.create_model(a.model, pretrained=True)
train = reswise.load_dataset("imagefolder", f"{a.root}/train")
test = reswise.load_dataset("imagefolder", f"{a.root}/test")
t0 = time.time()
state = adapt_one(lm, train, a.res, steps=a.steps, lr=a.lr, distill=a.distill)
top1 = reswise.sweep(lm, test, [a.res], bn_states={a.res: state}).rows[0]["top1"]
print(f"{a.model} adapter at {a.res}: {a.steps} steps, lr {a.lr}, distill {a.distill}: top-1 "
      f"{top1:.2f} % on {len(test)} CIFAR-10 (JPEG copy) test images ({time.time() - t0:.0f} s)")  # fmt: skip
