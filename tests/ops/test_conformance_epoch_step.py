"""Op conformance, tdds::epoch_step*: every (backend, device) pair against the reference.

The conformance suite's scenarios (tests/support/conformance.py says how pairs are compared).
"""

import math

import pytest
import torch

from tdds_kernels.ops.schema import EPOCH

from tests.support import conformance
from tests.support.conformance import REF_STEP, cpu
from tests.support.helpers import clone, make_state

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")
case = conformance.pairs(**conformance.CASE)
other = conformance.pairs(**conformance.OTHER)


# ------------------------------------------------------------------ epoch step
@pytest.mark.parametrize("decay", [0.9, 1.0, 0.25])
@pytest.mark.parametrize("n", [1, 37, 1000])
@pytest.mark.parametrize("w", [2, 3, 10, 20])
def test_epoch_step_matches_reference(other, w, n, decay):
    for epoch in sorted({0, 1, max(0, w - 2), w - 1, w, w + 7}):
        _, seen, ring, score, counters = make_state(n, 3, w, epoch=epoch, seed=epoch)
        if n >= 4:  # rows with no, one and exactly two defined d's
            ring[0] = float("nan")
            ring[1] = float("nan")
            ring[1, 0] = 2.0
            ring[2] = float("nan")
            ring[2, 0], ring[2, -1] = 3.0, 1.0
        out = other.to(seen, ring, score, counters)
        ref = clone((seen, ring, score, counters))
        other.epoch_step(*out, decay)
        REF_STEP(*ref, decay)
        out = cpu(out)
        assert torch.equal(out[0], ref[0]) and out[3].tolist() == ref[3].tolist()
        assert int(out[3][EPOCH]) == epoch + 1
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(out[2], ref[2], rtol=1e-5, atol=1e-6)


def test_epoch_step_known_windows(case):
    nan = float("nan")
    # W = 4 (3 slots) at epoch 3: slot 2 is marked for the missing sample, then the window folds.
    seen, ring, score, counters = case.to(
        torch.tensor([3, 2, 3, 3], dtype=torch.int32),
        torch.tensor([[1.0, 2.0, 6.0], [1.0, 3.0, 9.0], [nan, 4.0, nan], [nan, nan, nan]]),
        torch.ones(4),
        torch.tensor([0, 0, 0, 0, 3]),
    )
    case.epoch_step(seen, ring, score, counters, 0.5)
    r0 = math.sqrt((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2)  # mean 3
    expect = torch.tensor([0.5 + 0.5 * r0, 0.5 + 0.5 * math.sqrt(2), 0.5, 0.5])  # sample 1: d's 1, 3
    torch.testing.assert_close(score.cpu(), expect)
    assert math.isnan(ring[1, 2]) and ring[0, 2] == 6.0 and counters.tolist() == [0, 1, 0, 0, 4]
    # W = 5: recorded at epoch 3, no window yet; missing at 4: slot 3 becomes NaN and the window
    # over the defined [1, 3] has mean 2 and R = sqrt(2); S = β·R from 0.
    seen, ring, score, counters = case.to(
        torch.tensor([3], dtype=torch.int32),
        torch.tensor([[1.0, nan, 3.0, 5.0]]),
        torch.zeros(1),
        torch.tensor([0, 0, 0, 0, 3]),
    )
    case.epoch_step(seen, ring, score, counters, 0.5)
    assert score.item() == 0 and counters.tolist() == [0, 0, 0, 0, 4] and ring[0, 2] == 3.0
    case.epoch_step(seen, ring, score, counters, 0.5)
    assert torch.isnan(ring[0, 3]) and counters.tolist() == [0, 1, 0, 0, 5]
    torch.testing.assert_close(score.cpu(), torch.tensor([0.5 * 2.0**0.5]))


def test_epoch_step_without_samples_advances_the_epoch(case):
    _, seen, ring, score, counters = case.to(*make_state(0, 3, 4, epoch=5))
    case.epoch_step(seen, ring, score, counters, 0.9)
    assert counters.tolist() == [3, 5, 7, 11, 6]


def test_epoch_advances_once_over_many_blocks(case):
    # The epoch is read and advanced in one launch: every block must see the same e, and e + 1 remain.
    n = 1_280_000 if case.device == "cuda" else 3_000
    _, seen, ring, score, counters = make_state(n, 3, 10, epoch=12)
    out = case.to(seen, ring, score, counters)
    case.epoch_step(*out, 0.9)
    ref = clone((seen, ring, score, counters))
    REF_STEP(*ref, 0.9)
    out = cpu(out)
    assert out[3].tolist() == ref[3].tolist() and int(out[3][EPOCH]) == 13
    torch.testing.assert_close(out[2], ref[2], rtol=1e-5, atol=1e-6)
