"""Accelerate: TrackerState through save_state / load_state resumes bit-exactly on 1 and 2
processes (examples/accelerate_example.py: 1 process in this one, 2 under torchrun with gloo on
loopback)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")

from tdds_kernels import TDDSTracker  # noqa: E402
from tdds_kernels.integrations.accelerate import TrackerState  # noqa: E402

from tests.support.helpers import REPO, load_example, one_thread_per_module, torchrun  # noqa: E402, F401 (autouse fixture)

example = load_example("accelerate_example")


def run(*args, world=1, cwd=None):
    if world == 1:  # in this process: no start-up cost
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            example.main(["--epochs", "4", *map(str, args)])
        return out.getvalue()
    return torchrun(REPO / "examples" / "accelerate_example.py", "--epochs", "4", *args, world=world, cwd=cwd)


def check_resumes(tmp_path, world, cases):
    out = run("--out", tmp_path / "full.pt", world=world)
    assert "'duplicates': 0, 'missing': 0" in out
    full = torch.load(tmp_path / "full.pt")
    assert full.abs().sum() > 0
    steps_per_epoch = 200 // 10 // world
    for stop, save_every in cases:
        ck = tmp_path / f"ck{stop}"
        assert "stopped at step" in run("--ckpt", ck, "--stop-at-step", stop, "--save-every", save_every, world=world)
        out = run("--ckpt", ck, "--out", tmp_path / "resumed.pt", world=world)
        assert f"resumed at epoch 1, step {stop - steps_per_epoch}" in out
        assert "'duplicates': 0, 'missing': 0" in out
        assert torch.equal(torch.load(tmp_path / "resumed.pt"), full), stop


def test_one_process_resume_matches_an_uninterrupted_run(tmp_path):
    # Epoch 1 (20 steps) half done; epoch 1's last step (saved before end_epoch).
    check_resumes(tmp_path, 1, [(30, 10), (40, 20)])


def test_two_processes_resume_matches_an_uninterrupted_run(tmp_path):
    # Epoch 1 of 10 steps per process, 6 done.
    check_resumes(tmp_path, 2, [(16, 4)])


def test_tracker_state_round_trip_and_bad_argument():
    a = TDDSTracker(6, 3, window=3, trajectory_len=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        a.update(torch.randn(6, 3, generator=g), torch.arange(6))
        a.end_epoch()
    a.update(torch.randn(3, 3, generator=g), torch.arange(3))  # an open epoch travels too
    b = TDDSTracker(6, 3, window=3, trajectory_len=4)
    TrackerState(b).load_state_dict(TrackerState(a).state_dict())
    for key, value in a.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
        else:
            assert b.state_dict()[key] == value, key
    with pytest.raises(TypeError, match="tracker: expected a TDDSTracker"):
        TrackerState({})
