"""`train` as trustworthy as `sweep` (issue 31): no resumed run on changed data or weights, no
work lost to a bad --out or flag, no NaN weights or NaN in the JSON log, one writer per --out,
and --class-map used as the sweep uses it."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from reswise import create_model, load_dataset
from reswise.cli import main
from reswise.errors import ReswiseError
from reswise.finetune import train as train_mod
from reswise.finetune.train import TrainConfig, train
from reswise.records import files as files_mod
from reswise.records.rundir import hold

from .conftest import make_imagefolder

CFG = TrainConfig(epochs=2, batch_size=6, lr=0.05, warmup_epochs=0.5, channels_last=False)


def _train(data, out, cfg=CFG, log=None):
    torch.manual_seed(0)
    lm = create_model("cifar_resnet20", pretrained=False)
    notes: list[str] = []
    train(lm, data, cfg, out, progress=False, log=log or notes.append)
    return torch.load(out, weights_only=True), notes


def _stop_at(monkeypatch, n: int) -> list[int]:
    steps: list[int] = []
    real = train_mod._step

    def step(*a):
        steps.append(1)
        if len(steps) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(train_mod, "_step", step)
    return steps


def test_a_stopped_run_on_changed_images_starts_afresh_with_a_note(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "d", n_per_class=6)
    steps = _stop_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        _train(load_dataset("imagefolder", root), tmp_path / "a.pt")
    assert (tmp_path / "a.pt.state").is_file()
    shutil.copy(root / "class0" / "000.png", root / "class0" / "999.png")  # one image more
    monkeypatch.undo()
    changed = load_dataset("imagefolder", root)
    got, notes = _train(changed, tmp_path / "a.pt")
    assert any("other images" in n and "starting afresh" in n for n in notes), notes
    assert not any(n.startswith("resuming") for n in notes)
    want, _ = _train(changed, tmp_path / "b.pt")  # a clean run on the new folder
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert "(19 images" in (tmp_path / "a.md").read_text()
    assert len(steps) == 4


def test_a_stopped_run_from_other_starting_weights_starts_afresh(tmp_path, monkeypatch):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=6))
    _stop_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _train(data, tmp_path / "a.pt")
    monkeypatch.undo()
    torch.manual_seed(1)  # other starting weights, same everything else
    lm = create_model("cifar_resnet20", pretrained=False)
    notes: list[str] = []
    train(lm, data, CFG, tmp_path / "a.pt", progress=False, log=notes.append)
    assert any("other starting weights" in n for n in notes), notes


def test_a_second_writer_of_one_out_is_refused(tmp_path):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=2))
    out = tmp_path / "a.pt"
    with hold(out.with_name(out.name + ".lock"), f"{out}"):
        with pytest.raises(ReswiseError, match="being written by another reswise run"):
            _train(data, out)
    assert not out.exists()


def _cli_refuses(capsys, tmp_path, monkeypatch, argv, message):
    """``train ARGV`` fails in one line naming the problem, before any training step."""
    root = make_imagefolder(tmp_path / "d", n_per_class=2)

    def no_epoch(*a, **k):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(train_mod, "_epoch", no_epoch)
    code = main(["train", "--model", "cifar_resnet20", "--random-init", "--dataset",
                 "imagefolder", "--data-root", str(root), "--epochs", "1", "--no-progress",
                 *argv])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--lr", "inf"], "--lr must be a positive number"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be"),
        (["--label-smoothing", "1.5"], "--label-smoothing must be"),
        (["--train-resolutions", "32,100000"], "needs about"),
        # checked at the first step, after the data was loaded (fourth round as a new user)
        (["--train-resolutions", "32,24", "--largest-weight", "2"], "--largest-weight must be"),
        (["--train-resolutions", "32,24", "--largest-weight", "nan"], "--largest-weight must be"),
    ],
)
def test_bad_flags_are_refused_before_any_work(capsys, tmp_path, monkeypatch, argv, message):
    _cli_refuses(capsys, tmp_path, monkeypatch, [*argv, "--out", str(tmp_path / "o.pt")], message)


def test_an_out_that_is_a_folder_or_unwritable_is_refused_before_any_work(
    capsys, tmp_path, monkeypatch
):
    (tmp_path / "dir").mkdir()
    _cli_refuses(capsys, tmp_path, monkeypatch, ["--out", str(tmp_path / "dir")], "is a folder")
    (tmp_path / "file").write_text("x")
    _cli_refuses(capsys, tmp_path, monkeypatch, ["--out", str(tmp_path / "file" / "o.pt")],
                 "which is a file")  # fmt: skip


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=6))
    real = train_mod._step
    calls: list[int] = []

    def step(*a):
        calls.append(1)
        loss = real(*a)
        return loss * float("nan") if len(calls) == 5 else loss  # epoch 2, step 2

    monkeypatch.setattr(train_mod, "_step", step)
    with pytest.raises(ReswiseError, match=r"non-finite loss at epoch 2, step 2.*--lr"):
        _train(data, tmp_path / "a.pt")
    assert not (tmp_path / "a.pt").exists()  # no NaN weights written
    state = torch.load(tmp_path / "a.pt.state", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 0  # the end of the last good epoch
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_the_json_log_and_result_are_strict_json(capsys, tmp_path):
    root = make_imagefolder(tmp_path / "d", n_per_class=2)
    assert main(["train", "--model", "cifar_resnet20", "--random-init", "--dataset",
                 "imagefolder", "--data-root", str(root), "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "o.pt"), "--json"]) == 0  # fmt: skip
    out = capsys.readouterr().out

    def refuse(c):
        raise ValueError(f"not JSON: {c}")

    d = json.loads(out, parse_constant=refuse)
    assert d["history"][0]["epoch"] == 1


def test_class_map_is_used_as_the_sweep_uses_it(capsys, tmp_path):
    root = make_imagefolder(tmp_path / "d", n_per_class=2, classes=2)
    (root / "class0").rename(root / "kitty")
    (root / "class1").rename(root / "pup")
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"kitty": "cat", "pup": "dog"}))
    d = None
    assert main(["train", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--dataset", "imagefolder", "--data-root", str(root), "--class-map", str(cmap),
                 "--epochs", "1", "--batch-size", "4", "--lr", "0.001", "--no-progress",
                 "--out", str(tmp_path / "o.pt"), "--json"]) == 0  # fmt: skip
    d = json.loads(capsys.readouterr().out)
    assert d["num_classes"] == 10 and "new head" not in d["labels"], d["labels"]
    merging = tmp_path / "merge.json"
    merging.write_text(json.dumps({"kitty": "cat", "pup": "cat"}))
    code = main(["train", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                 "--dataset", "imagefolder", "--data-root", str(root), "--class-map",
                 str(merging), "--epochs", "1", "--no-progress", "--out",
                 str(tmp_path / "m.pt")])  # fmt: skip
    err = capsys.readouterr().err
    sweep = main(["sweep", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
                  "--dataset", "imagefolder", "--data-root", str(root), "--class-map",
                  str(merging), "--resolutions", "32", "--no-progress"])  # fmt: skip
    sweep_err = capsys.readouterr().err
    assert sweep == 2 and code == 2, (err, sweep_err)
    assert err.splitlines()[-1] == sweep_err.splitlines()[-1]


@pytest.mark.parametrize("fails", ["state", "weights", "card"])
def test_a_full_disk_while_train_writes_names_the_file_and_leaves_no_partial_file(
    capsys, tmp_path, monkeypatch, fails
):
    import errno
    from pathlib import Path

    root = make_imagefolder(tmp_path / "d", n_per_class=2)
    out = tmp_path / "o" / "a.pt"
    real_save = torch.save
    target = {"state": "a.pt.state", "weights": "a.pt", "card": "a.md"}[fails]

    def full(path) -> bool:
        # the writer may write a temporary file beside the target: the disk fills there too
        return Path(path).name.startswith((target, f".{target}")) or (
            fails == "state" and Path(path).name == "a.pt.tmp"
        )

    def save(obj, path, *a, **k):
        if full(path):
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    class FullFile:
        """A file on a disk that fills after five bytes."""

        def __init__(self, f):
            self.f = f

        def write(self, b):
            self.f.write(b[:5])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def opener(path, *a, **k):
        f = open(path, *a, **k)  # noqa: SIM115 - wrapped, closed by the wrapper
        return FullFile(f) if full(path) else f

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(files_mod, "open", opener, raising=False)  # the text writers' open
    code = main(["train", "--model", "cifar_resnet20", "--random-init", "--dataset",
                 "imagefolder", "--data-root", str(root), "--epochs", "1", "--no-progress",
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert target in err and "No space left" in err, err
    left = sorted(p.name for p in out.parent.iterdir())
    assert not any("tmp" in n for n in left), left
    assert target not in left, left  # no partial file where the whole one belongs


def test_bf16_is_the_default_where_it_was_measured_faster(tmp_path):
    """ResNet-20 trains 1.45x faster under bf16 autocast on an AVX-512 bf16 CPU, a Lite0
    specialist step 0.66x: the default follows the family, --bf16 / --fp32 override it, and the
    card's command says whatever differs from the default."""
    from reswise.cli.main import build_parser
    from reswise.cli.model_tools import train_config
    from reswise.finetune.card import CardFacts, command

    def cfg(model, *flags):
        args = build_parser().parse_args(["train", "--model", model, "--dataset", "imagefolder",
                                          "--data-root", "x", "--out", "o.pt", *flags])  # fmt: skip
        from reswise.models import model_info

        return train_config(args, "", model_info(model).family)

    assert cfg("cifar_resnet20").bf16 and not cfg("cifar_resnet20", "--fp32").bf16
    assert not cfg("efficientnet_lite0").bf16 and cfg("efficientnet_lite0", "--bf16").bf16
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=1))
    facts = CardFacts("efficientnet_lite0", "", data, None, "", 1, 0)
    assert "--bf16" in command(cfg("efficientnet_lite0", "--bf16"), facts, tmp_path / "o.pt")
    assert "--bf16" not in command(cfg("efficientnet_lite0"), facts, tmp_path / "o.pt")
    assert "--fp32" in command(cfg("efficientnet_lite0"), facts, tmp_path / "o.pt")


def test_a_resumed_run_scored_on_another_test_set_says_which_epochs(tmp_path, monkeypatch):
    """Resumed with another --test-root, the card listed every epoch's top-1 under the new
    test set, the first epochs measured on the old one (fourth round as a new user)."""
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=6))
    old = load_dataset("imagefolder", make_imagefolder(tmp_path / "old", n_per_class=4, seed=3))
    new = load_dataset("imagefolder", make_imagefolder(tmp_path / "new", n_per_class=5, seed=4))
    lm = lambda: (torch.manual_seed(0), create_model("cifar_resnet20", pretrained=False))[1]  # noqa: E731
    _stop_at(monkeypatch, 4)  # 3 steps an epoch: stops in epoch 2, epoch 1 scored on `old`
    with pytest.raises(KeyboardInterrupt):
        train(lm(), data, CFG, tmp_path / "a.pt", test_data=old, progress=False, log=print)
    monkeypatch.undo()
    notes: list[str] = []
    out = train(lm(), data, CFG, tmp_path / "a.pt", test_data=new, progress=False,
                log=notes.append)  # fmt: skip
    assert any("epoch 1 was scored on" in n and str(tmp_path / "old") in n for n in notes), notes
    card = (tmp_path / "a.md").read_text()
    first, second = (ln for ln in card.splitlines() if ln.startswith("  - epoch"))
    assert "(on `" in first and "old" in first and "12 images" in first, first
    assert "(on" not in second, second
    assert out["history"][0]["test_set"]["n"] == 12 and out["history"][1]["test_set"]["n"] == 15


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--lr", "0.01", "--label-smoothing", "0.2", "--fp32"],
        ["--train-resolutions", "32,24,16", "--distill", "--sandwich-k", "2"],
        ["--specialists", "24,16", "--temperature", "2"],
        ["--specialists", "24", "--labels", "--label-smoothing", "0.05"],
    ],
)
def test_the_cards_command_runs_the_same_config_again(tmp_path, flags):
    """The card's command is what a user copies: parsed and checked as `train` does, it must
    ask for the same config. A label-free specialists card said `--label-smoothing 0.1` (a
    flag that run never used) (fourth round as a new user)."""
    import shlex

    from reswise.cli.main import build_parser
    from reswise.cli.model_tools import train_config
    from reswise.finetune.card import CardFacts, command
    from reswise.finetune.checks import check_flags

    def cfg(argv):
        args = build_parser().parse_args(argv)
        return train_config(args, "cifar_resnet20.reswise_jpeg", "cifar_resnet")

    base = ["train", "--model", "cifar_resnet20", "--pretrained", "reswise_jpeg",
            "--dataset", "imagefolder", "--data-root", "x", "--out", "o.pt"]  # fmt: skip
    first = cfg(base + flags)
    data = load_dataset("imagefolder", make_imagefolder(tmp_path / "d", n_per_class=1))
    facts = CardFacts("cifar_resnet20", "cifar_resnet20.reswise_jpeg", data, None, "", 1, 0)
    again = shlex.split(command(first, facts, tmp_path / "o.pt"))
    assert again[:2] == ["reswise", "train"]
    second = cfg(again[1:])
    check_flags(second, 32)
    assert second == first
    if first.specialists and not first.specialist_labels:
        assert "--label-smoothing" not in again  # no cross-entropy to smooth
