"""Low-resolution specialists distilled from the user's model, without labels (issue 29).

Real CIFAR-10 (JPEG copy) training images in a flat folder (no class folders), the shipped
single-resolution ResNet-20 as the user's model: the native stage stays the model bit for bit,
each specialist rides as per-resolution state every later stage uses at its resolution, and
the specialists learn the model's outputs (they agree with it more after training).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reswise import create_model, load_dataset
from reswise.cli import main
from reswise.data import normalizer, to_input
from reswise.errors import ReswiseError
from reswise.finetune import train as train_mod
from reswise.finetune.specialist import Specialists, specialist_loss
from reswise.finetune.train import TrainConfig, train
from reswise.models.checkpoint import MADE_KEY, split_checkpoint

from .conftest import CIFAR_JPEG, needs_shared

pytestmark = needs_shared


def _flat(tmp_path, n: int = 96, split: str = "train"):
    """``n`` real CIFAR-10 JPEGs (all classes mixed) copied straight into one folder."""
    src = sorted((CIFAR_JPEG / split).glob("*/*.jpg"))[:: 50000 // n if split == "train" else 100]
    flat = tmp_path / f"flat_{split}"
    flat.mkdir()
    for p in src[:n]:
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
    return flat


def _trained_at_20(tmp_path):
    """A checkpoint: the shipped ResNet-20 plus a 20x20 specialist (one epoch, 64 images)."""
    out = tmp_path / "spec.pt"
    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg")
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.02, specialists=(20,), channels_last=False)
    data = load_dataset("imagefolder", _flat(tmp_path, n=64), unlabelled=True)
    train(lm, data, cfg, out, progress=False, log=lambda m: None)
    return out


def _run(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _images(folder, r: int, lm):
    """The folder's images at r x r as the sweep feeds them (whole image, bilinear + AA)."""
    x = load_dataset("imagefolder", folder, unlabelled=True).images.float()
    if r != x.shape[-1]:
        x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    return to_input(x, normalizer(lm.info.mean, lm.info.std))


def test_cli_trains_specialists_on_a_flat_folder_and_keeps_the_model(capsys, tmp_path):
    flat = _flat(tmp_path)
    out = tmp_path / "spec.pt"
    d = _run(capsys, ["train", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                      "--dataset", "imagefolder", "--data-root", str(flat), "--specialists",
                      "24,16", "--epochs", "1", "--batch-size", "32", "--lr", "0.02",
                      "--out", str(out), "--no-progress", "--json"])  # fmt: skip
    assert d["config"]["specialists"] == [24, 16]
    assert "labels unused" in d["labels"]
    state = torch.load(out, weights_only=True)
    plain, extra = split_checkpoint(state)
    own = create_model("cifar_resnet20", pretrained="reswise_jpeg").model.state_dict()
    assert plain.keys() == own.keys()
    for k in own:  # the native stage is the user's model, bit for bit
        assert torch.equal(plain[k], own[k]), k
    assert extra.resolutions == [16, 24]
    assert extra.kinds(own.keys()) == {16: "specialist", 24: "specialist"}
    moved = [
        k for k in own if own[k].is_floating_point() and not torch.equal(extra.get(24)[k], own[k])
    ]
    assert moved, "the 24x24 specialist did not train"
    assert "distilled from cifar_resnet20.reswise_jpeg at 32x32" in extra.made
    assert MADE_KEY in state
    card = out.with_suffix(".md").read_text()
    assert "**specialists**" in card and "a flat folder, no labels" in card
    assert "--specialists 24,16" in card
    assert "label smoothing" not in card  # it said 0.1 where no cross-entropy ran


def test_sweep_uses_each_specialist_at_its_resolution(capsys, tmp_path):
    out = _trained_at_20(tmp_path)
    test = _flat(tmp_path, n=100, split="test")
    classes = tmp_path / "test"  # the sweep needs labels: the same images in class folders
    for p in test.iterdir():
        (classes / p.name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, classes / p.name.split("_")[0] / p.name)
    d = _run(capsys, ["sweep", "--model", "cifar_resnet20", "--checkpoint", str(out),
                      "--dataset", "imagefolder", "--data-root", str(classes),
                      "--resolutions", "32,20", "--out", str(tmp_path / "run"), "--json",
                      "--no-progress"])  # fmt: skip
    assert "per-resolution specialists for [20]" in d["weights"]
    # independently: the specialist's own weights at 20, the plain model at 32
    spec = create_model("cifar_resnet20", checkpoint=out)
    model20 = create_model("cifar_resnet20", pretrained="reswise_jpeg").model
    model20.load_state_dict(spec.extra.get(20))
    data = load_dataset("imagefolder", classes)
    names = spec.info.class_names
    labels = torch.tensor([names.index(data.classes[i]) for i in data.labels])
    for r, net in ((20, model20), (32, spec.model)):
        with torch.no_grad():
            pred = net.eval()(_images(classes, r, spec))
        want = 100 * int((pred.argmax(1) == labels).sum()) / len(labels)
        row = next(row for row in d["rows"] if row["resolution"] == r)
        assert row["top1"] == pytest.approx(want, abs=1e-6), r


def test_specialists_learn_the_models_outputs_without_labels(tmp_path):
    flat = _flat(tmp_path, n=128)
    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg")
    x32, x16 = _images(flat, 32, lm), _images(flat, 16, lm)
    with torch.no_grad():
        teacher = lm.model(x32).argmax(1)
        before = float((lm.model(x16).argmax(1) == teacher).float().mean())
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.02, warmup_epochs=0.25,
                      specialists=(16,), channels_last=False)  # fmt: skip
    train(lm, load_dataset("imagefolder", flat, unlabelled=True), cfg, tmp_path / "s.pt",
          progress=False, log=lambda m: None)  # fmt: skip
    spec = create_model("cifar_resnet20", checkpoint=tmp_path / "s.pt")
    net = create_model("cifar_resnet20", pretrained="reswise_jpeg").model
    net.load_state_dict(spec.extra.get(16))
    with torch.no_grad():
        after = float((net.eval()(x16).argmax(1) == teacher).float().mean())
    assert after > before + 0.05, (before, after)


def test_the_teacher_sees_the_students_view_at_the_native_size(tmp_path, monkeypatch):
    """Every step hands the teacher the augmented batch the specialists get, resized to 32."""
    flat = _flat(tmp_path, n=40)
    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg")
    seen: list[tuple[int, torch.Tensor]] = []
    real = Specialists.forward
    teacher_inputs: list[torch.Tensor] = []

    def spy(self, x, r):
        seen.append((r, x.detach().clone()))
        return real(self, x, r)

    monkeypatch.setattr(Specialists, "forward", spy)
    real_teacher = type(lm.model).forward

    def teacher_spy(self, x):
        if not torch.is_grad_enabled() and len(x) > 1:  # not the memory probe (one image)
            teacher_inputs.append(x.detach().clone())
        return real_teacher(self, x)

    monkeypatch.setattr(type(lm.model), "forward", teacher_spy)
    cfg = TrainConfig(epochs=1, batch_size=20, lr=0.01, specialists=(16,), channels_last=False)
    train(lm, load_dataset("imagefolder", flat, unlabelled=True), cfg, tmp_path / "s.pt",
          progress=False, log=lambda m: None)  # fmt: skip
    student = [x for r, x in seen if r == 16]
    assert len(student) == len(teacher_inputs) == 2
    for xs, xt in zip(student, teacher_inputs):
        assert xt.shape[-1] == 32 and xs.shape[-1] == 16
        # the same view: the teacher's input, resized to 16, is the student's input
        down = F.interpolate(xt, size=(16, 16), mode="bilinear", antialias=True)
        assert float((down - xs).abs().max()) < 0.05


def test_the_loss_is_zero_when_the_student_matches_the_teacher():
    logits = torch.randn(8, 10)
    soft = logits.softmax(1)
    assert float(specialist_loss(logits, soft, None, 1.0, 0.1)) == pytest.approx(0, abs=1e-6)
    soft2 = (logits / 2).softmax(1)
    assert float(specialist_loss(logits, soft2, None, 2.0, 0.1)) == pytest.approx(0, abs=1e-6)
    assert float(specialist_loss(torch.zeros(8, 10), soft, None, 1.0, 0.1)) > 0.01


def test_a_specialists_step_does_not_depend_on_how_many_train_beside_it():
    """Each copy has its own weights: its gradient is its own loss's, whatever the others are
    (dividing by the number of specialists made --lr mean lr/3 with three of them)."""
    from reswise.finetune.specialist import specialist_step
    from reswise.finetune.train import _Plan

    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg")
    xb = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8).float()
    grads = {}
    for res in ([24], [24, 16]):
        net = Specialists(lm.model, res, 32).train()
        cfg = TrainConfig(specialists=tuple(res), channels_last=False)
        plan = _Plan(
            cfg, [32, *res], False, normalizer(lm.info.mean, lm.info.std), torch.device("cpu"), None
        )
        specialist_step(net, xb, torch.zeros(6, dtype=torch.long), plan)
        grads[len(res)] = net.copies["24"].linear.weight.grad.clone()
    assert torch.allclose(grads[1], grads[2], atol=1e-6)


def _continue(tmp_path, monkeypatch, ckpt, specialists):
    """Train ``specialists`` on the weights in ``ckpt``: what each copy started from, the log,
    and the new file's decoded per-resolution state."""
    started, logs = {}, []

    class Spy(Specialists):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            started.update({r: {n: t.clone() for n, t in self.overrides(r).items()}
                            for r in self.extra})  # fmt: skip

    from reswise.finetune import carry

    monkeypatch.setattr(carry, "Specialists", Spy)
    lm = create_model("cifar_resnet20", checkpoint=str(ckpt))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.02, specialists=specialists,
                      channels_last=False)  # fmt: skip
    (tmp_path / "more").mkdir()
    data = load_dataset("imagefolder", _flat(tmp_path / "more", n=32), unlabelled=True)
    out = tmp_path / "more.pt"
    train(lm, data, cfg, out, progress=False, log=logs.append)
    return started, logs, split_checkpoint(torch.load(out, weights_only=True))[1]


def test_specialists_the_weights_carry_go_on_from_where_they_are(tmp_path, monkeypatch):
    """Training specialists on weights that already carry one at that resolution trains it
    longer (a run in two sittings) instead of starting it over from the model; the log and the
    new file's recipe say so, and a new resolution still starts from the model."""
    ckpt = _trained_at_20(tmp_path)
    plain, before = split_checkpoint(torch.load(ckpt, weights_only=True))
    started, logs, after = _continue(tmp_path, monkeypatch, ckpt, (20, 16))
    assert all(torch.equal(started[20][k], t) for k, t in before.get(20).items())
    assert all(torch.equal(started[16][k], plain[k]) for k in started[16])
    assert any("specialists at [20] go on from the weights' own" in m for m in logs)
    assert after.resolutions == [16, 20]
    assert f"those at 20x20 went on from the weights' own ({before.made})" in after.made
    card = (tmp_path / "more.md").read_text()
    assert "; specialists at [20] go on from the weights' own" in card


def test_per_resolution_state_a_new_run_drops_is_named(tmp_path, monkeypatch):
    """Specialists at other resolutions than those the weights carry: the new file will not
    hold the old ones, and the log says which (not a silent loss)."""
    ckpt = _trained_at_20(tmp_path)
    _, logs, after = _continue(tmp_path, monkeypatch, ckpt, (16,))
    assert after.resolutions == [16]
    assert any("per-resolution specialists for [20] are not in the new file" in m for m in logs)


def test_private_bn_the_weights_carry_goes_on_and_plain_training_names_what_it_drops():
    """Multi-resolution training from multi-resolution weights starts each private BN from the
    weights' own (it restarted them from the native BN); plain training on such weights says
    the new file will not hold them."""
    from reswise.finetune.carry import carry_note, trainee

    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg_multires")
    assert lm.extra.resolutions  # private BN below 32
    r = lm.extra.resolutions[0]
    cfg = TrainConfig(train_resolutions=(32, *lm.extra.resolutions))
    net = trainee(lm, cfg, [32, *sorted(lm.extra.resolutions, reverse=True)], 32, multi=True)
    own = lm.extra.get(r)
    assert all(torch.equal(t, own[k]) for k, t in net.overrides(r).items() if k in own)
    assert not all(torch.equal(t, lm.model.state_dict()[k]) for k, t in net.overrides(r).items())
    assert f"private BN at {sorted(lm.extra.resolutions, reverse=True)} go on" in carry_note(
        lm, net
    )
    plain = trainee(lm, TrainConfig(), [32], 32, multi=False)
    assert "are not in the new file" in carry_note(lm, plain)
    assert "--train-resolutions" not in carry_note(lm, plain)


def test_a_specialist_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import os
    import signal

    flat = _flat(tmp_path, n=40)
    data = load_dataset("imagefolder", flat, unlabelled=True)
    cfg = TrainConfig(epochs=2, batch_size=10, lr=0.02, specialists=(24, 16), channels_last=False)

    def run(out):
        lm = create_model("cifar_resnet20", pretrained="reswise_jpeg")
        train(lm, data, cfg, out, progress=False, log=lambda m: None)
        return torch.load(out, weights_only=True)

    full = run(tmp_path / "a.pt")
    steps: list[int] = []
    real = train_mod.specialist_step

    def step(*a):
        steps.append(1)
        if len(steps) == 6:  # second step of the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(train_mod, "specialist_step", step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt")
    steps.clear()
    again = run(tmp_path / "b.pt")
    assert len(steps) == 8 - 6
    for k in full:
        assert torch.equal(full[k], again[k]), k


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--specialists", "32,16"], "not below the model's native 32"),
        (["--specialists", "16,16"], "lists a resolution twice"),
        (["--specialists", "16", "--train-resolutions", "32,16"], "pick one"),
        (["--specialists", "16", "--labels"], "--labels needs class folders"),
        (["--labels"], "--labels goes with --specialists"),
        (["--specialists", "16", "--temperature", "0"], "--temperature must be a positive"),
        ([], "a flat folder of images works for `train --specialists`"),
        # a random teacher: they trained and were saved (second round as a new user)
        (["--random-init", "--specialists", "16"], "it has random weights"),
        # flags of other recipes ran without effect, exit 0 (third round as a new user)
        (["--specialists", "16", "--distill"], "--distill is for multi-resolution training"),
        (["--specialists", "16", "--shared-bn"], "--shared-bn is for multi-resolution training"),
        (["--specialists", "16", "--sandwich-k", "2"], "--sandwich-k is for multi-resolution"),
        (["--specialists", "16", "--largest-weight", "0.5"], "--largest-weight is for multi-"),
        (["--specialists", "16", "--label-smoothing", "0.2"], "--label-smoothing smooths"),
        (["--temperature", "2"], "--temperature goes with --specialists"),
        # an empty list trained the user's model itself (with class folders), exit 0
        (["--specialists", ""], "--specialists is empty"),
        (["--train-resolutions", ""], "--train-resolutions is empty"),
    ],
)
def test_bad_specialist_flags_are_refused_in_one_line(capsys, tmp_path, extra, message):
    flat = _flat(tmp_path, n=8)
    weights = [] if "--random-init" in extra else ["--pretrained", "reswise_jpeg"]
    code = main(["train", "--model", "cifar_resnet20", *weights,
                 "--dataset", "imagefolder", "--data-root", str(flat), "--epochs", "1",
                 "--out", str(tmp_path / "o.pt"), "--no-progress", *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.pt").exists()


def test_a_class_map_on_a_flat_folder_is_refused_in_one_line(capsys, tmp_path):
    """It was an IndexError traceback (third round as a new user): a flat folder has no class
    folders for the map to map."""
    flat = _flat(tmp_path, n=8)
    cmap = tmp_path / "map.json"
    cmap.write_text('{"cat": "dog"}')
    code = main(["train", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--dataset", "imagefolder", "--data-root", str(flat), "--epochs", "1",
                 "--specialists", "16", "--class-map", str(cmap), "--out", str(tmp_path / "o.pt"),
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--class-map maps class folders" in err, err
    assert len(err.strip().splitlines()) == 1


def test_labels_add_cross_entropy_mapped_by_class_name(tmp_path):
    folder = tmp_path / "byclass"
    for p in sorted((CIFAR_JPEG / "train").glob("*/*.jpg"))[::1000][:50]:
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.parent.name / p.name)
    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg")
    cfg = TrainConfig(epochs=1, batch_size=25, lr=0.01, specialists=(16,),
                      specialist_labels=True, channels_last=False)  # fmt: skip
    res = train(lm, load_dataset("imagefolder", folder), cfg, tmp_path / "s.pt", progress=False,
                log=lambda m: None)  # fmt: skip
    assert "mapped by class name" in res["labels"] and "cross-entropy" in res["labels"]
    with pytest.raises(ReswiseError, match="has 11 class folders"):
        lm2 = create_model("cifar_resnet20", pretrained="reswise_jpeg")
        many = tmp_path / "many"
        for i in range(11):
            (many / f"c{i}").mkdir(parents=True)
            shutil.copy(
                next((CIFAR_JPEG / "train" / "cat").glob("*.jpg")), many / f"c{i}" / "a.jpg"
            )
        train(lm2, load_dataset("imagefolder", many), cfg, tmp_path / "t.pt", progress=False,
              log=lambda m: None)  # fmt: skip


def test_state_kind_tells_specialists_adapters_and_bn_apart():
    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg")
    own = lm.model.state_dict()
    from reswise.finetune.adapt import adapter_keys
    from reswise.finetune.multires import bn_state_keys
    from reswise.models.checkpoint import state_kind

    assert state_kind(dict(own), own.keys()) == "specialist"
    assert state_kind({k: own[k] for k in adapter_keys(lm.model)}, own.keys()) == "adapter"
    assert state_kind({k: own[k] for k in bn_state_keys(lm.model)}, own.keys()) == "bn"


def test_specialists_travel_into_the_policy_the_export_and_int8_stages(capsys, tmp_path):
    """sweep (fp32 + int8) -> cascade --save -> export -> OnnxCascade on specialist weights,
    with no flag about specialists anywhere: the policy says which stage is one."""
    from reswise.ship.runtime import OnnxCascade, load_images

    out = _trained_at_20(tmp_path)
    test = tmp_path / "test"
    for p in sorted((CIFAR_JPEG / "test").glob("*/*.jpg"))[::50]:  # 200 images, every class
        (test / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, test / p.parent.name / p.name)
    run = tmp_path / "run"
    swept = _run(capsys, ["sweep", "--model", "cifar_resnet20", "--checkpoint", str(out),
                          "--dataset", "imagefolder", "--data-root", str(test), "--resolutions",
                          "32,20", "--precision", "fp32,int8", "--out", str(run), "--json",
                          "--no-progress"])  # fmt: skip
    at20 = {row["precision"]: row["top1"] for row in swept["rows"] if row["resolution"] == 20}
    assert abs(at20["int8"] - at20["fp32"]) <= 3.0  # int8 calibrated on the specialist at 20
    policy = tmp_path / "p.json"
    _run(capsys, ["select", "--from", str(run), "--max-drop", "60", "--save", str(policy),
                  "--json"])  # fmt: skip
    p = json.loads(policy.read_text())
    assert p["chain"] == [20]
    assert p["stage_state"] == {"20": "specialist"}
    # it printed "(BN per stage: {'20': 'weights'})", a Python dict (fourth round as a new user)
    assert main(["select", "--from", str(run), "--max-drop", "60", "--save", str(policy)]) == 0
    assert f"policy written to {policy} (stages: 20 specialist)" in capsys.readouterr().out
    assert "distilled from cifar_resnet20.reswise_jpeg" in p["state_made"]
    shipped = tmp_path / "shipped"
    d = _run(capsys, ["export", "--policy", str(policy), "--format", "onnx", "--out",
                      str(shipped), "--json"])  # fmt: skip
    assert d["max_abs_logit_diff"] < 1e-3 and d["prediction_agreement"] == 1.0
    assert json.loads((shipped / "policy.json").read_text())["stage_state"] == {"20": "specialist"}
    # the shipped 20x20 stage is the specialist, not the model: compare with both in torch
    paths = sorted(test.glob("*/*.jpg"))[:32]
    logits, res = OnnxCascade(shipped)(load_images(paths))
    assert set(res.tolist()) == {20}
    spec = create_model("cifar_resnet20", checkpoint=out)
    net = create_model("cifar_resnet20", pretrained="reswise_jpeg").model.eval()
    x = torch.from_numpy(load_images(paths)).float()
    x = to_input(F.interpolate(x, size=(20, 20), mode="bilinear", antialias=True),
                 normalizer(spec.info.mean, spec.info.std))  # fmt: skip
    with torch.no_grad():
        plain = net(x).numpy()
        net.load_state_dict(spec.extra.get(20))
        special = net(x).numpy()
    # (torch resizes float pixels here, the graph rounds them to uint8 first: not bit-equal)
    assert 10 * np.abs(logits - special).max() < np.abs(logits - plain).max()
    assert (logits.argmax(1) == special.argmax(1)).mean() >= 0.9


def test_a_flat_folder_of_variable_size_images_streams(tmp_path):
    """Images of several sizes (no same-size tensor): decoded per step, random-resized-crop
    to the native size, the teacher and the specialist on the same crop."""
    from PIL import Image

    from reswise.data import FileImages

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted((CIFAR_JPEG / "train").glob("*/*.jpg"))[::2500][:20]):
        side = 40 + 8 * (i % 4)  # 40..64 pixels: variable sizes
        Image.open(p).convert("RGB").resize((side, side + 4 * (i % 3))).save(flat / f"{i}.png")
    data = load_dataset("imagefolder", flat, unlabelled=True)
    assert isinstance(data, FileImages) and data.classes == []
    lm = create_model("cifar_resnet20", pretrained="reswise_jpeg")
    cfg = TrainConfig(epochs=1, batch_size=10, lr=0.01, specialists=(16,), channels_last=False)
    res = train(lm, data, cfg, tmp_path / "s.pt", progress=False, log=lambda m: None, workers=0)
    assert res["history"][0]["images_per_rank"] == [20]
    spec = create_model("cifar_resnet20", checkpoint=tmp_path / "s.pt")
    assert spec.extra.kinds(spec.model.state_dict().keys()) == {16: "specialist"}
