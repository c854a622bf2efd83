"""tdds::epoch_step_triton against the reference op on fresh random state (DESIGN.md §3).

CPU under TRITON_INTERPRET=1 (conftest), CUDA when there is a GPU. Every buffer is compared
whole: missing marks only in slot (e−1) mod (W−1) of missing samples, the fold only from epoch
W−1 on, counters added to (not overwritten), the epoch advanced.
"""
import math

import pytest
import torch

import tdds_kernels  # noqa: F401
from tdds_kernels.ops import schema as _ops
from test_triton_update import DEVICES, triton_ops

TOL = dict(atol=1e-6, rtol=1e-5)


def make_state(n, w1, epoch, device, p_nan=0.3):
    seen = torch.randint(max(-1, epoch - 2), epoch + 1, (n,), dtype=torch.int32)
    ring = torch.rand(n, w1) * 5
    ring[torch.rand(n, w1) < p_nan] = float("nan")
    if n >= 4:  # rows with no, one and exactly two defined d's
        ring[0] = float("nan")
        ring[1] = float("nan")
        ring[1, 0] = 2.0
        ring[2, :] = float("nan")
        ring[2, -1] = 1.0
        ring[2, 0] = 3.0 if w1 > 1 else 1.0
    score = torch.rand(n)
    counters = torch.tensor([3, 5, 7, 11, epoch], dtype=torch.int64)
    return [t.to(device) for t in (seen, ring, score, counters)]


def run_both(state, decay):
    ref = [t.clone() for t in state]
    out = [t.clone() for t in state]
    torch.ops.tdds.epoch_step(*ref, decay)
    torch.ops.tdds.epoch_step_triton(*out, decay)
    return ref, out


def assert_state(out, ref):
    for name, a, b in zip(("seen", "ring", "score", "counters"), out, ref):
        tol = TOL if a.is_floating_point() else dict(atol=0, rtol=0)
        torch.testing.assert_close(a, b, equal_nan=True, **tol, msg=name)


@pytest.mark.parametrize("decay", [0.9, 1.0, 0.25])
@pytest.mark.parametrize("n", [1, 37, 1000])
@pytest.mark.parametrize("window", [2, 3, 10, 20])
@pytest.mark.parametrize("device", DEVICES)
def test_epoch_step_matches_reference(device, window, n, decay):
    triton_ops(device)
    w1 = window - 1
    for epoch in sorted({0, 1, max(0, w1 - 1), w1, w1 + 3}):
        state = make_state(n, w1, epoch, device)
        ref, out = run_both(state, decay)
        assert_state(out, ref)
        assert int(out[3][_ops.EPOCH]) == epoch + 1


@pytest.mark.parametrize("device", DEVICES)
def test_window_values_and_missing(device):
    # W = 4 (3 slots) at epoch 3: slot 2 is marked for the missing sample, then the window folds.
    triton_ops(device)
    nan = float("nan")
    seen = torch.tensor([3, 2, 3, 3], dtype=torch.int32, device=device)
    ring = torch.tensor([[1.0, 2.0, 6.0], [1.0, 3.0, 9.0], [nan, 4.0, nan], [nan, nan, nan]],
                        device=device)
    score = torch.tensor([1.0, 1.0, 1.0, 1.0], device=device)
    counters = torch.tensor([0, 0, 0, 0, 3], device=device)
    torch.ops.tdds.epoch_step_triton(seen, ring, score, counters, 0.5)
    r0 = math.sqrt((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2)  # mean 3
    expect = torch.tensor([0.5 + 0.5 * r0, 0.5 + 0.5 * math.sqrt(2), 0.5, 0.5])  # sample 1: d's 1, 3
    torch.testing.assert_close(score.cpu(), expect)
    assert math.isnan(ring[1, 2]) and ring[0, 2] == 6.0
    assert counters.tolist() == [0, 1, 0, 0, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_no_fold_before_the_first_window(device):
    triton_ops(device)
    state = make_state(50, 4, 2, device)  # W = 5: the first window closes at epoch 4
    out = [t.clone() for t in state]
    torch.ops.tdds.epoch_step_triton(*out, 0.9)
    torch.testing.assert_close(out[2], state[2], atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_all_present_epoch_zero(device):
    # Nothing missing at epoch 0: no NaN marks, no fold, only the epoch advances.
    triton_ops(device)
    state = make_state(64, 3, 0, device, p_nan=0.0)
    state[0].fill_(0)
    out = [t.clone() for t in state]
    torch.ops.tdds.epoch_step_triton(*out, 0.9)
    for a, b in zip(out[:3], state[:3]):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)
    assert out[3].tolist() == [3, 5, 7, 11, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_no_samples_still_advances_the_epoch(device):
    triton_ops(device)
    state = make_state(0, 3, 5, device)
    ref, out = run_both(state, 0.9)
    assert_state(out, ref)
    assert out[3].tolist() == [3, 5, 7, 11, 6]


@pytest.mark.parametrize("device", DEVICES)
def test_epoch_advances_once_over_many_programs(device):
    # The epoch is read and advanced in one launch (a ticket per program in counters[EPOCH]'s
    # high half): with thousands of programs every one must see the same e, and e + 1 remain.
    triton_ops(device)
    n = 1_280_000 if device == "cuda" else 3_000
    state = make_state(n, 9, 12, device)
    ref, out = run_both(state, 0.9)
    assert_state(out, ref)
    assert int(out[3][_ops.EPOCH]) == 13
