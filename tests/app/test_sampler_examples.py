"""The in-run pruning examples run end to end on CPU, and a resumed run (stopped mid-epoch after
the switch) gives the uninterrupted run's scores, kept set and batches."""

from __future__ import annotations

import sys

import torch

from tests.support.commands import EXAMPLES, run


def same_run(a, b):
    a, b = torch.load(a), torch.load(b)
    assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["kept"], b["kept"])
    assert a["batches"] == b["batches"]


def test_in_run_plain_resumes_mid_epoch(tmp_path):
    script = EXAMPLES / "in_run_plain.py"
    out = run(sys.executable, script, "--out", tmp_path / "full.pt")
    assert "steps per epoch 20 before epoch 6, 10 after" in out and "epoch 6: kept 500 of 1000" in out
    assert "steps 180 of 180; samples 9000 (75% of full)" in out
    ck = tmp_path / "ck.pt"
    assert "stopped at step 125" in run(sys.executable, script, "--ckpt", ck, "--stop-after-step", "125")
    out = run(sys.executable, script, "--ckpt", ck, "--out", tmp_path / "resumed.pt")
    assert "resumed at epoch 6, step 125" in out
    same_run(tmp_path / "full.pt", tmp_path / "resumed.pt")


def test_in_run_plain_options():
    out = run(
        sys.executable,
        EXAMPLES / "in_run_plain.py",
        "--epochs",
        "8",
        "--strategy",
        "class_balanced",
        "--epoch-length",
        "repeat",
        "--weights",
        "inverse_keep",
    )
    assert "steps per epoch 20 before epoch 6, 20 after" in out and "steps 160 of 160" in out


def torchrun(*args):
    cmd = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    return run(*cmd, EXAMPLES / "in_run_torchrun.py", *args, timeout=180)


def test_in_run_torchrun_resumes_mid_epoch(tmp_path):
    out = torchrun("--out", tmp_path / "full.pt")
    assert "epoch 4: kept 501 of 1001" in out and "steps 96 of 96 per rank" in out
    assert "stopped at step 90" in torchrun("--ckpt", tmp_path / "ck", "--stop-after-step", "90")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "state.pt",
        "tdds-90.pt.rank0-of-2",
        "tdds-90.pt.rank1-of-2",
    ]
    out = torchrun("--ckpt", tmp_path / "ck", "--out", tmp_path / "resumed.pt")
    assert "resumed at epoch 7, step 90" in out
    same_run(tmp_path / "full.pt", tmp_path / "resumed.pt")
