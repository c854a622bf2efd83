"""Each example runs end to end on CPU (subprocesses, small synthetic data, hard timeouts)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from tests.support.commands import EXAMPLES, run


def torchrun(*args):
    return run(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        EXAMPLES / "ddp_torchrun.py",
        *args,
    )


def test_plain_loop(tmp_path):
    out = run(sys.executable, EXAMPLES / "plain_loop.py", "--epochs", "4", "--out", tmp_path / "s.pt")
    assert "kept 512 of 1024" in out
    assert torch.load(tmp_path / "s.pt").shape == (1024,)


def test_plain_loop_resume_matches_an_uninterrupted_run(tmp_path):
    """README: examples/plain_loop.py "adds resume": stopped after epoch 1 and run again, it gives
    the uninterrupted run's scores exactly."""
    example = EXAMPLES / "plain_loop.py"
    run(sys.executable, example, "--epochs", "4", "--ckpt", tmp_path / "full", "--out", tmp_path / "full.pt")
    out = run(sys.executable, example, "--epochs", "4", "--ckpt", tmp_path / "ck", "--stop-after", "1")
    assert "epoch 1:" in out and "epoch 2:" not in out and "kept" not in out
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model-2.pt", "tdds.pt"]
    out = run(sys.executable, example, "--epochs", "4", "--ckpt", tmp_path / "ck", "--out", tmp_path / "resumed.pt")
    assert "resumed at epoch 2" in out and "epoch 1:" not in out and "kept 512 of 1024" in out
    assert torch.equal(torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "full.pt"))


def test_ddp_torchrun_resume_matches_an_uninterrupted_run(tmp_path):
    torchrun("--epochs", "4", "--out", tmp_path / "full.pt")
    out = torchrun("--epochs", "4", "--ckpt", tmp_path / "ck", "--stop-after", "1")
    assert "epoch 1:" in out and "epoch 2:" not in out
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "model-2.pt",
        "tdds.pt.rank0-of-2",
        "tdds.pt.rank1-of-2",
    ]
    out = torchrun("--epochs", "4", "--ckpt", tmp_path / "ck", "--out", tmp_path / "resumed.pt")
    assert "resumed at epoch 2" in out and "'duplicates': 4" in out  # 1001 samples on 2 ranks: 1 pad per epoch
    assert torch.equal(torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt"))


@pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None, reason="pytorch-lightning not installed")
def test_lightning_example(tmp_path):
    out = run(
        sys.executable,
        EXAMPLES / "lightning_example.py",
        "--epochs",
        "3",
        "--out",
        tmp_path / "s.pt",
        "--release-dir",
        tmp_path / "rel",
        "--retrain-epochs",
        "1",
        cwd=tmp_path,
    )
    assert "kept 500" in out and "retrained 1 epochs on 500 samples" in out
    scores = torch.load(tmp_path / "s.pt")
    assert scores.shape == (1000,)
    mask = np.load(tmp_path / "rel" / "data_mask_win3_ep3.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "rel" / "score_win3_ep3.npy"), scores.numpy()[mask])


@pytest.mark.skipif(importlib.util.find_spec("pytorch_lightning") is None, reason="pytorch-lightning not installed")
def test_lightning_example_prunes_in_run(tmp_path):
    args = ("--epochs", "4", "--trajectory-len", "3", "--prune-in-run", "0.5", "--out", tmp_path / "s.pt")
    out = run(sys.executable, EXAMPLES / "lightning_example.py", *args, cwd=tmp_path)
    assert "in-run: epochs 3..3 on 500 kept samples" in out
    assert torch.load(tmp_path / "s.pt").shape == (1000,)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_hf_trainer(tmp_path):
    # Resumes and 2 ranks: tests/app/test_hf.py.
    out = run(
        sys.executable,
        EXAMPLES / "hf_trainer.py",
        "--epochs",
        "3",
        "--output-dir",
        tmp_path / "out",
        cwd=tmp_path,
        timeout=300,
    )
    assert "kept 48" in out and "'duplicates': 0, 'missing': 0" in out


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate not installed")
def test_accelerate_example(tmp_path):
    # Resumes and 2 processes: tests/app/test_accelerate.py.
    out = run(
        sys.executable, EXAMPLES / "accelerate_example.py", "--epochs", "3", "--out", tmp_path / "s.pt", cwd=tmp_path
    )
    assert "kept 100 of 200" in out and torch.load(tmp_path / "s.pt").shape == (200,)
