"""torchrun sweep: sharded across 2 CPU processes (gloo), identical to the single-process run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from reswise.measure.distributed import merge_records
from reswise.models.cifar_resnet import CifarResNet
from reswise.records import Records

from .conftest import CIFAR_JPEG, needs_shared


def _records(n_rank: int, rank: int, n: int = 10) -> Records:
    idx = np.arange(rank, n, n_rank)
    return Records(
        [8],
        idx,
        idx % 3,
        idx[None, :, None].astype(np.int32),
        np.ones((1, len(idx), 1), np.float32),
        np.zeros((1, len(idx)), np.float32),
    )


def test_merge_restores_dataset_order_and_refuses_duplicates():
    m = merge_records([_records(3, r) for r in range(3)])
    assert m.indices.tolist() == list(range(10)) and m.topk_idx[0, :, 0].tolist() == list(range(10))
    try:
        merge_records([_records(1, 0), _records(1, 0)])
    except RuntimeError as e:
        assert "two ranks" in str(e)
    else:
        raise AssertionError("duplicate samples were not detected")


@needs_shared
def test_two_process_torchrun_sweep_equals_single_process(tmp_path):
    torch.manual_seed(0)
    ck = tmp_path / "r20.pt"
    torch.save(CifarResNet(20).state_dict(), ck)
    # a small real set: 150 images of the CIFAR-10 JPEG copy, batches of 16 -> uneven shards
    common = [
        "sweep",
        "--model",
        "cifar_resnet20",
        "--checkpoint",
        str(ck),
        "--dataset",
        "imagefolder",
        "--data-root",
        str(CIFAR_JPEG / "test"),
        "--limit",
        "150",
        "--resolutions",
        "32,24,16",
        "--batch-size",
        "16",
        "--no-progress",
        "--json",
    ]
    one = subprocess.run(
        [sys.executable, "-m", "reswise", *common, "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "reswise",
            *common,
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a = Records.load(tmp_path / "a" / "records.npz")
    b = Records.load(tmp_path / "b" / "records.npz")
    assert len(b.indices) == 150 and b.indices.tolist() == list(range(150))
    for f in ["labels", "topk_idx"]:
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert np.allclose(a.topk_prob, b.topk_prob, atol=1e-5)
    ja = json.loads(one.stdout)
    jb = json.loads(two.stdout.strip().splitlines()[-1])
    assert [r["top1"] for r in ja["rows"]] == [r["top1"] for r in jb["rows"]]
    assert jb["timings"]["world_size"] == 2


def test_device_auto_under_torchrun_picks_nccl_and_each_rank_its_own_gpu(monkeypatch):
    """'auto' used to pick gloo (the literal string is not 'cuda...') and then cuda:0 everywhere."""
    import pytest

    from reswise.measure import distributed

    seen = {}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: seen.setdefault("gpu", i))

    def init(backend):
        seen["backend"] = backend
        raise RuntimeError("stop before any real work")

    monkeypatch.setattr(distributed.dist, "init_process_group", init)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="stop before"):
        distributed.sweep(None, None, [32], device="auto")
    assert seen == {"gpu": 1, "backend": "nccl"}
