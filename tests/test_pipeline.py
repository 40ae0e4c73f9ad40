"""The Python API does what the commands do: same numbers from `reswise.*` as from `--json`."""

from __future__ import annotations

import json

import pytest

import reswise
from reswise.cli import main

from .conftest import make_imagefolder

TIMING = {"eval_images_per_s"}  # measured, so it differs from run to run


def cli_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture
def runs(capsys, tmp_path, ckpt):
    """One sweep with --recalibrate-bn made by the CLI and the same made by the API."""
    root = make_imagefolder(tmp_path / "d", n_per_class=20)
    argv = ["sweep", "--model", "cifar_resnet20", "--checkpoint", str(ckpt), "--dataset",
            "imagefolder", "--data-root", str(root), "--resolutions", "32,24,16",
            "--recalibrate-bn", "--calib-split", "--seed", "2", "--no-progress", "--json"]  # fmt: skip
    cli = cli_json(capsys, [*argv, "--out", str(tmp_path / "cli")])
    cfg = reswise.SweepConfig(model="cifar_resnet20", checkpoint=str(ckpt), dataset="imagefolder",
                              data_root=str(root), resolutions=[32, 24, 16], recalibrate_bn=True,
                              calib_split=True, seed=2, out=str(tmp_path / "api"))  # fmt: skip
    api = reswise.run_sweep(cfg)
    return cli, api, tmp_path


def test_sweep_with_bn_recalibration_api_equals_cli(runs):
    cli, api, _ = runs
    assert strip(cli["rows"]) == strip(api.to_dict()["rows"])
    bn_cli, bn_api = cli["bn_recalibration"], api.to_dict()["bn_recalibration"]
    assert strip(bn_cli["rows"]) == strip(bn_api["rows"])
    assert bn_cli["calib_split"] == bn_api["calib_split"] == {"calib_frac": 0.5, "seed": 2, "n": 60}
    # the run object keeps what shipping a choice needs: the BN statistics themselves
    assert sorted(api.bn.states) == [16, 24, 32]
    again = reswise.load_run(api.directory)
    assert sorted(again.bn.states) == [16, 24, 32]
    key = next(iter(again.bn.states[16]))
    assert (again.bn.states[16][key] == api.bn.states[16][key]).all()


def test_select_cascade_compare_random_api_equal_cli(capsys, runs):
    _, _, tmp = runs
    run = reswise.load_run(tmp / "api")
    src = ["--from", str(tmp / "cli"), "--seed", "2", "--json"]
    sel = cli_json(capsys, ["select", *src, "--max-drop", "5", "--test", "exact"])
    assert sel == {**reswise.select(run, reswise.Budget(max_drop=5, seed=2), test="exact").to_dict(),
                   **{k: sel[k] for k in ("model", "weights", "dataset")}}  # fmt: skip
    cas = cli_json(capsys, ["cascade", *src, "--max-drop", "5"])
    mine = reswise.cascade(run, reswise.Budget(max_drop=5, seed=2)).to_dict()
    assert {k: cas[k] for k in mine} == json.loads(json.dumps(mine))
    cmp_ = cli_json(capsys, ["compare", *src])
    mine = reswise.compare_policies(run, reswise.Budget(seed=2)).to_dict()
    assert cmp_["rows"] == json.loads(json.dumps(mine["rows"]))
    rnd = cli_json(capsys, ["random", *src, "--resolutions", "32,16"])
    mine = reswise.random_choice(run, seed=2, resolutions=[32, 16]).to_dict()
    assert {k: rnd[k] for k in mine} == json.loads(json.dumps(mine))


def test_latency_api_and_cli_give_the_same_fields_and_settings(capsys):
    cli = cli_json(capsys, ["latency", "--model", "cifar_resnet20", "--random-init",
                            "--resolutions", "32,16", "--repeats", "2", "--warmup", "1",
                            "--threads", "1", "--json"])  # fmt: skip
    lm = reswise.create_model("cifar_resnet20")
    rows = reswise.measure_latency(lm, [32, 16], threads=1, repeats=2, warmup=1)
    settings = ("resolution", "batch_size", "backend", "device", "threads", "fast_path")
    assert [set(r) for r in cli["rows"]] == [set(r) for r in rows]
    assert [[r[k] for k in settings] for r in cli["rows"]] == [
        [r[k] for k in settings] for r in rows
    ]


def test_report_plot_has_error_bars_and_names_the_data(monkeypatch, tmp_path, ckpt):
    import matplotlib.axes

    from reswise.records import report

    root = make_imagefolder(tmp_path / "cifar-like" / "test", n_per_class=4)
    cfg = reswise.SweepConfig(model="cifar_resnet20", checkpoint=str(ckpt), dataset="imagefolder",
                              data_root=str(root), resolutions=[32, 16], out=str(tmp_path / "r"))  # fmt: skip
    run = reswise.run_sweep(cfg, write=False)
    bars, titles = [], []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kw):
        bars.append(yerr)
        return real(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **kw: titles.append(t))
    report.write_report(run, tmp_path / "r")
    lo, hi = bars[0]  # distance from each point to the ends of its paired 95 % CI
    for row, a, b in zip(run.rows, lo, hi):
        assert row["acc_drop_pct"] - a == pytest.approx(row["acc_drop_ci"][0])
        assert row["acc_drop_pct"] + b == pytest.approx(row["acc_drop_ci"][1])
    assert titles == [f"cifar_resnet20 on cifar-like/test, n={run.n}"]
    assert (tmp_path / "r" / "accuracy_vs_flops.png").stat().st_size > 1000
