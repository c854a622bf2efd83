"""One conformance suite for every (backend, device) pair: each scenario written once.

The pairs (helpers.backend_cases): reference, cpu (C++ extension) and triton (interpreted) on
CPU; reference, triton and cuda (extension) on a GPU, skipped without one. Op-level scenarios
compare a backend with the reference op run on CPU copies of the same state (so the reference on
CUDA is checked too; the CPU reference against itself would be no check, so it takes part only
where a scenario has its own expected values). Tracker-level scenarios compare every pair with
the dense float64 restatement (tests/dense.py) and with the release fixtures (tests/fixtures).

Rows that share an index inside one batch: every backend applies the first usable one in batch
order, whatever its execution order, so duplicates are compared exactly like any other row.
"""

import functools
import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdds_kernels as tk
from tdds_kernels.ops import reference_topk, registry
from tdds_kernels.ops.schema import (
    CORRECT,
    DUPLICATES,
    EL2N,
    EPOCH,
    EPS,
    MARGIN,
    NONFINITE,
    OUT_OF_RANGE,
    ROW_STATS,
    TARGET_PROB,
    topk_index_dtype,
)

from conftest import FIXTURES
from tests.support.dense import dense_scores
from tests.support.helpers import backend_cases, clone, make_state, probability_sweep, random_epochs

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")

REF_UPDATE, REF_STEP = torch.ops.tdds.update, torch.ops.tdds.epoch_step
STORAGE = [torch.float32, torch.bfloat16, torch.float16]
LOGITS = [torch.float32, torch.float16, torch.bfloat16]


class Case:
    """One (device, backend) pair: its ops, and whether shapes must stay small (interpreted Triton)."""

    def __init__(self, device, backend):
        self.device, self.backend = device, backend
        b = registry.resolve(backend, torch.device(device))
        self.update, self.epoch_step = b.update, b.epoch_step
        # The compressed-row update (prev_topk, docs/design.md §2.1), where the backend has one.
        self.topk_reason = registry.unavailable_reason(backend, torch.device(device), topk=True)
        self.update_topk = None if self.topk_reason else registry.resolve(backend, torch.device(device), True).update
        self.small = device == "cpu" and backend == "triton"
        # Variants of the update launcher that take another code path for the same contract.
        self.updates = [("default", self.update)]
        if backend == "triton":
            import tdds_kernels.ops.triton as tt

            self.updates.append(("chunk256", functools.partial(tt.update, block=256)))
        self.topk_updates = [("default", self.update_topk)]
        if backend == "triton" and self.update_topk is not None:
            self.topk_updates.append(("chunk16", functools.partial(tt.update_topk, block=16)))

    def need_topk(self):
        if self.update_topk is None:
            pytest.skip(self.topk_reason)
        return self.update_topk

    def to(self, *tensors):
        return tuple(t.to(self.device, copy=True) for t in tensors)  # copies: the originals stay the oracle's


@pytest.fixture(params=backend_cases())
def case(request):
    return Case(*request.param)


@pytest.fixture(params=backend_cases(exclude=("cpu-reference",)))
def other(request):
    """Every pair but the CPU reference, which is the oracle they are compared with."""
    return Case(*request.param)


# ------------------------------------------------------------------ state and comparison
def cpu(ts):
    return tuple(t.cpu() for t in ts)


def tolerances(storage):
    # Two float32 implementations of exp/log differ by a few ulp; a reduced storage dtype can
    # round such a difference to one unit of its last place.
    return {
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.bfloat16: dict(rtol=8e-3, atol=1e-5),
        torch.float16: dict(rtol=1e-3, atol=1e-5),
    }[storage]


RING_TOL = dict(rtol=1e-5, atol=1e-5)  # d in float32: exp/log rounding and summation order


def assert_update_state(out, ref, storage=torch.float32):
    prev_o, seen_o, ring_o, counters_o = cpu(out)
    prev_r, seen_r, ring_r, counters_r = cpu(ref)
    assert torch.equal(seen_o, seen_r), "seen"
    assert counters_o.tolist() == counters_r.tolist(), "counters"
    torch.testing.assert_close(prev_o.float(), prev_r.float(), **tolerances(storage), msg=lambda m: f"prev: {m}")
    torch.testing.assert_close(ring_o, ring_r, equal_nan=True, **RING_TOL, msg=lambda m: f"ring: {m}")


def run_update(update, logits, index, state):
    """(backend state, CPU reference state) after one update of copies of (prev, seen, ring,
    counters). Every backend applies the first usable row of a sample in batch order (docs/design.md
    §3), so the states must agree whatever the kernel's execution order."""
    out = clone(state)
    update(logits, index, *out)
    ref = clone(cpu(state))
    REF_UPDATE(logits.cpu(), index.cpu(), *ref)
    return out, ref


# ------------------------------------------------------------------ update
@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("logits_dtype", LOGITS)
@pytest.mark.parametrize("b,c", [(1, 1), (13, 7), (40, 100), (97, 1271), (5, 32000)])
def test_update_matches_reference(other, storage, logits_dtype, b, c):
    if other.small and c * b > 20000 and c != 32000:
        pytest.skip("interpreted Triton: the wide-row path is covered by C=32000 with few rows")
    if (
        other.small
        and c == 32000
        and (logits_dtype, storage) not in ((torch.float32, torch.float32), (torch.float16, torch.float16))
    ):
        pytest.skip("interpreted Triton: two dtype pairs of the wide rows are enough (each ~15 s)")
    n = 3 * b + 5
    for name, update in other.updates:
        for epoch in (0, 1, 5):
            prev, seen, ring, _, counters = make_state(n, c, 4, storage, epoch, seed=b + c + epoch)
            index = torch.randperm(n)[:b]
            logits = (torch.randn(b, c) * 4).to(logits_dtype)
            state = other.to(prev, seen, ring, counters)
            out, ref = run_update(update, *other.to(logits, index), state)
            assert_update_state(out, ref, storage)
            untouched = torch.ones(n, dtype=torch.bool)
            untouched[index] = False  # rows of other samples keep their old values exactly
            assert torch.equal(out[0].cpu()[untouched], prev[untouched]), name
            assert torch.equal(out[2].cpu()[untouched].nan_to_num(-1), ring[untouched].nan_to_num(-1)), name


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("w", [2, 3, 10])
def test_edge_rows_and_window_sizes(other, index_dtype, w):
    # In one batch: a duplicate, out-of-range indices, NaN / +inf / -inf rows whose samples also
    # have a finite row (applied; the non-finite one never claims the sample), in any order.
    n, c = 24, 10
    for name, update in other.updates:
        state = make_state(n, c, w, epoch=3, seed=w)
        idx = torch.randperm(n)[:12]
        z = torch.randn(12, c) * 4
        idx = torch.cat([idx, idx[:1], torch.tensor([-1, n]), idx[1:4]])
        z = torch.cat([z, z[:1] + 1, torch.randn(2, c), torch.randn(3, c)])
        z[-3, c // 2], z[-2, 0], z[-1, c - 1] = float("nan"), float("inf"), float("-inf")
        perm = torch.randperm(idx.numel())
        logits, index = other.to(z[perm], idx[perm].to(index_dtype))
        st = other.to(*state[:3], state[4])
        out, ref = run_update(update, logits, index, st)
        assert_update_state(out, ref)
        new = out[3].cpu() - state[4]
        assert new[NONFINITE] == 3 and new[OUT_OF_RANGE] == 2, name


@pytest.mark.parametrize("c", [5, 1000])
def test_in_batch_duplicates_apply_the_first_row(other, c):
    # Many copies of few samples: the stored row is the first usable row's log-softmax, never a mix.
    b = 64 if other.small else 4096 if other.device == "cuda" else 512
    for (_, update), epoch in itertools.product(other.updates, (0, 1)):
        prev, seen, ring, _, counters = make_state(8, c, 3, epoch=epoch, seed=c)
        index = torch.randint(0, 8, (b,))
        logits = torch.randn(b, c) * 3
        out, ref = run_update(update, *other.to(logits, index), other.to(prev, seen, ring, counters))
        assert_update_state(out, ref)
        lp = torch.log(torch.softmax(logits, 1) + EPS)
        for s in torch.unique(index).tolist():
            if seen[s] != epoch:
                assert (lp[index == s] - out[0][s].cpu()).abs().amax(1).min() < 1e-5


def test_duplicates_across_batches_are_counted_and_ignored(case):
    prev, seen, ring = case.to(*make_state(10, 6, 3, epoch=1)[:3])
    (counters,) = case.to(torch.tensor([5, 6, 7, 8, 1]))
    seen.fill_(0)
    case.update(*case.to(torch.randn(3, 6), torch.tensor([1, 4, 7])), prev, seen, ring, counters)
    after_first = clone((prev, seen, ring))
    case.update(*case.to(torch.randn(3, 6), torch.tensor([4, 7, 2])), prev, seen, ring, counters)
    assert int(counters[DUPLICATES]) == 5 + 2
    rows = torch.tensor([1, 4, 7], device=case.device)
    for a, b in zip(after_first, (prev, seen, ring)):
        assert torch.equal(a[rows].nan_to_num(-1), b[rows].nan_to_num(-1))
    assert int(seen[2]) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", LOGITS)
def test_nonfinite_rows_are_skipped_and_do_not_claim(case, bad, dtype):
    prev, seen, ring, _, _ = make_state(5, 40, 3, epoch=1)
    seen.fill_(0)
    counters = torch.tensor([5, 6, 7, 8, 1])
    prev, seen, ring, counters = case.to(prev, seen, ring, counters)
    logits = torch.randn(3, 40)
    logits[1, 17] = bad
    before = clone((prev, seen, ring))
    case.update(*case.to(logits.to(dtype), torch.tensor([0, 2, 4])), prev, seen, ring, counters)
    assert int(counters[NONFINITE]) == 7 + 1 and int(counters[DUPLICATES]) == 5
    assert seen.tolist() == [1, 0, 0, 0, 1]
    assert torch.equal(prev[2], before[0][2]) and torch.equal(ring[2].nan_to_num(-1), before[2][2].nan_to_num(-1))
    # a finite row for that sample later in the epoch is still applied
    case.update(*case.to(torch.randn(1, 40).to(dtype), torch.tensor([2])), prev, seen, ring, counters)
    assert int(seen[2]) == 1 and int(counters[DUPLICATES]) == 5


def test_out_of_range_rows_are_skipped_and_counted(case):
    prev, seen, ring, _, counters = case.to(*make_state(5, 6, 3, epoch=1))
    before = clone((prev, seen, ring))
    case.update(*case.to(torch.randn(4, 6), torch.tensor([-1, 5, 1000, -(2**40)])), prev, seen, ring, counters)
    assert int(counters[OUT_OF_RANGE]) == 11 + 4
    for a, b in zip(before, (prev, seen, ring)):
        assert torch.equal(a.nan_to_num(-1), b.nan_to_num(-1))
    case.update(*case.to(torch.randn(2, 6), torch.tensor([-3, 7], dtype=torch.int32)), prev, seen, ring, counters)
    assert int(counters[OUT_OF_RANGE]) == 11 + 6


def test_empty_batch_changes_nothing(case):
    state = case.to(*make_state(5, 6, 3))
    out = clone(state)
    case.update(*case.to(torch.empty(0, 6), torch.empty(0, dtype=torch.long)), out[0], out[1], out[2], out[4])
    for a, b in zip(out, state):
        assert torch.equal(a.nan_to_num(-1), b.nan_to_num(-1))


@pytest.mark.parametrize("c", [10, 300])
def test_extreme_logits(other, c):
    # Huge and tiny magnitudes (p underflows to 0: log(p + 1e-8) = log 1e-8), uniform rows, a
    # row that is all -inf or all NaN (skipped), fp16's largest values.
    z = torch.randn(8, c) * 30
    z[1] = 0.0
    z[2] = torch.linspace(-1e4, 1e4, c)
    z[3] = -3e4
    z[4], z[4, 0] = 65504.0, -65504.0
    z[5] = float("-inf")
    z[6] = float("nan")
    z[7] = 3e38
    for _, update in other.updates:
        for dtype in (torch.float32, torch.float16):
            prev, seen, ring, _, counters = make_state(8, c, 3, epoch=1)
            seen.fill_(0)  # all recorded last epoch
            out, ref = run_update(update, *other.to(z.to(dtype), torch.arange(8)), other.to(prev, seen, ring, counters))
            assert_update_state(out, ref)


@pytest.mark.parametrize("storage", STORAGE)
def test_probability_sweep(other, storage):
    # Each backend's own exp and log over their whole input range, d defined on every row.
    z = probability_sweep()
    b, c = z.shape
    for _, update in other.updates:
        prev, seen, ring, _, counters = make_state(b, c, 3, storage, epoch=1, seed=7)
        seen.fill_(0)  # all recorded last epoch
        out, ref = run_update(update, *other.to(z, torch.arange(b)), other.to(prev, seen, ring, counters))
        assert_update_state(out, ref, storage)
        assert not out[2].cpu()[:, 0].isnan().any()  # every row applied, d defined (slot (1 - 1) mod 2)


def test_known_transition_and_epoch_zero(case):
    # p = softmax([0, log 3]) = [1/4, 3/4] after q = [1/2, 1/2]:
    # d = 1/4 |log(1/4 + eps) - log(1/2 + eps)| + 3/4 |log(3/4 + eps) - log(1/2 + eps)|
    prev, seen, ring, counters = case.to(
        torch.log(torch.tensor([[0.5, 0.5]]) + 1e-8),
        torch.tensor([0], dtype=torch.int32),
        torch.full((1, 2), -7.0),
        torch.tensor([0, 0, 0, 0, 1]),
    )
    case.update(*case.to(torch.tensor([[0.0, float(np.log(3.0))]]), torch.tensor([0])), prev, seen, ring, counters)
    d = 0.25 * np.log(2.0) + 0.75 * np.log(1.5)
    assert ring[0, 0].item() == pytest.approx(d, rel=1e-6) and ring[0, 1].item() == -7.0
    assert seen.tolist() == [1]
    # Epoch 0 writes no transition: slot (0 - 1) mod (W - 1) gets NaN, the rest is untouched.
    prev, seen, ring, counters = case.to(
        torch.zeros(6, 5),
        torch.full((6,), -1, dtype=torch.int32),
        torch.full((6, 3), -7.0),
        torch.zeros(5, dtype=torch.int64),
    )
    case.update(*case.to(torch.randn(3, 5), torch.tensor([0, 3, 5])), prev, seen, ring, counters)
    assert seen.tolist() == [0, -1, -1, 0, -1, 0]
    assert torch.isnan(ring[[0, 3, 5], -1]).all() and (ring[[0, 3, 5], :-1] == -7.0).all()
    assert (ring[[1, 2, 4]] == -7.0).all()
    torch.testing.assert_close(prev[[0, 3, 5]].exp().sum(1).cpu(), torch.ones(3))


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


# ------------------------------------------------------------------ op registration
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
def test_opcheck(case, storage):
    prev, seen, ring, score, counters = case.to(*make_state(8, 5, 3, storage, epoch=0))
    logits, index = case.to(torch.randn(5, 5), torch.tensor([0, 2, 2, 7, 9]))  # a duplicate, out of range
    torch.library.opcheck(case.update.default, (logits, index, prev, seen, ring, counters))
    torch.library.opcheck(case.epoch_step.default, (seen, ring, score, counters, 0.9))
    counters[EPOCH] = 2
    torch.library.opcheck(case.update.default, (logits, index, prev, seen, ring, counters))
    torch.library.opcheck(case.epoch_step.default, (seen, ring, score, counters, 0.9))


# ------------------------------------------------------------------ compressed previous row
REF_UPDATE_TOPK = torch.ops.tdds.update_topk


def make_topk_state(n, c, w, k, storage=torch.float32, epoch=1, seed=0):
    """make_state with its previous rows compressed to k classes: (prev_val, prev_idx, prev_rest,
    seen, ring, counters)."""
    prev, seen, ring, _, counters = make_state(n, c, w, storage, epoch, seed)
    p = prev.float().exp()
    val, idx, rest = reference_topk.compress(p, torch.log(p + EPS), k)
    return val.to(storage), idx.to(topk_index_dtype(c)), rest.to(storage), seen, ring, counters


def run_update_topk(update, logits, index, state):
    out = clone(state)
    update(logits, index, *out)
    ref = clone(cpu(state))
    REF_UPDATE_TOPK(logits.cpu(), index.cpu(), *ref)
    return out, ref


def assert_topk_state(out, ref, storage=torch.float32):
    val_o, idx_o, rest_o, *rest_of_o = cpu(out)
    val_r, idx_r, rest_r, *rest_of_r = cpu(ref)
    assert torch.equal(idx_o, idx_r), "prev_idx"  # the kept set and its order are unique
    for name, a, b in (("prev_val", val_o, val_r), ("prev_rest", rest_o, rest_r)):
        torch.testing.assert_close(a.float(), b.float(), **tolerances(storage), msg=lambda m, n=name: f"{n}: {m}")
    seen_o, ring_o, counters_o = rest_of_o
    seen_r, ring_r, counters_r = rest_of_r
    assert torch.equal(seen_o, seen_r) and counters_o.tolist() == counters_r.tolist()
    torch.testing.assert_close(ring_o, ring_r, equal_nan=True, **RING_TOL, msg=lambda m: f"ring: {m}")


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,c,k", [(1, 1, 1), (13, 7, 1), (13, 7, 7), (40, 100, 8), (97, 1271, 32), (5, 32000, 128)])
def test_update_topk_matches_reference(other, storage, b, c, k):
    other.need_topk()
    if other.small and c > 1000:
        pytest.skip("interpreted Triton: wide rows are covered by the 16-class chunks of C = 100")
    n = 3 * b + 5
    for (name, update), epoch in itertools.product(other.topk_updates, (0, 1, 5)):
        state = make_topk_state(n, c, 4, k, storage, epoch, seed=b + c + k + epoch)
        index = torch.randperm(n)[:b]
        logits = torch.randn(b, c) * 4
        out, ref = run_update_topk(update, *other.to(logits, index), other.to(*state))
        assert_topk_state(out, ref, storage)
        untouched = torch.ones(n, dtype=torch.bool)
        untouched[index] = False  # other samples keep their rows exactly
        for got, before in zip(out[:3], state[:3]):
            assert torch.equal(got.cpu()[untouched], before[untouched]), name


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_update_topk_edge_rows(other, index_dtype):
    # A duplicate, out-of-range indices and non-finite rows, in any order; a uniform row (every
    # p ties: the k lowest class ids are kept) and a one-hot row.
    other.need_topk()
    n, c, k = 24, 10, 3
    state = make_topk_state(n, c, 3, k, epoch=3, seed=5)
    idx = torch.randperm(n)[:12]
    state[3][idx[:2]] = 2  # recorded last epoch: their rows below are applied
    z = torch.randn(12, c) * 4
    z[0], z[1] = 0.0, -1e4
    z[1, 6] = 1e4
    idx = torch.cat([idx, idx[:1], torch.tensor([-1, n]), idx[1:4]])
    z = torch.cat([z, z[:1] + 1, torch.randn(2, c), torch.randn(3, c)])
    z[-3, c // 2], z[-2, 0], z[-1, c - 1] = float("nan"), float("inf"), float("-inf")
    perm = torch.randperm(idx.numel())
    for _, update in other.topk_updates:
        out, ref = run_update_topk(update, *other.to(z[perm], idx[perm].to(index_dtype)), other.to(*state))
        assert_topk_state(out, ref)
        assert out[1][idx[0]].tolist() == [0, 1, 2] and out[1][idx[1]][0] == 6
    new = out[5].cpu() - state[5]
    assert new[NONFINITE] == 3 and new[OUT_OF_RANGE] == 2 and new[DUPLICATES] >= 1  # + samples seen this epoch


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
def test_update_topk_with_k_equal_c_is_the_full_update(case, storage):
    # Every class kept: the backend's compressed update equals its own full-row update.
    update_topk = case.need_topk()
    n, c = 30, 9
    val, idx, rest, seen, ring, counters = make_topk_state(n, c, 4, c, storage, epoch=2, seed=7)
    prev = torch.empty(n, c, dtype=storage).scatter_(1, idx.long(), val)
    logits, index = case.to(torch.randn(40, c) * 4, torch.randint(0, n, (40,)))
    full = case.to(prev, seen, ring, counters)
    topk = case.to(val, idx, rest, seen, ring, counters)
    case.update(logits, index, *full)
    update_topk(logits, index, *topk)
    expanded = torch.empty_like(full[0]).scatter_(1, topk[1].long(), topk[0])
    torch.testing.assert_close(expanded.float().cpu(), full[0].float().cpu(), **tolerances(storage))
    torch.testing.assert_close(topk[4].cpu(), full[2].cpu(), equal_nan=True, **RING_TOL)
    assert torch.equal(topk[3], full[1]) and torch.equal(topk[5], full[3])


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
def test_opcheck_topk(case, storage):
    update = case.need_topk()
    state = list(case.to(*make_topk_state(8, 5, 3, 2, storage, epoch=0)))
    logits, index = case.to(torch.randn(5, 5), torch.tensor([0, 2, 2, 7, 9]))
    torch.library.opcheck(update.default, (logits, index, *state))
    state[5][EPOCH] = 2
    torch.library.opcheck(update.default, (logits, index, *state))


@pytest.mark.filterwarnings("ignore:TDDSTracker. .* duplicates")
@pytest.mark.parametrize("k", [1, 4])
def test_tracker_topk_matches_dense_oracle(case, k):
    case.need_topk()
    n, c, w, t = (16, 7, 3, 5) if case.small else (50, 23, 4, 7)
    epochs = random_epochs(np.random.default_rng(k), n, c, t, p_missing=0.1, p_dup=0.1, p_nonfinite=0.05)
    tr = tk.TDDSTracker(
        n,
        c,
        window=w,
        decay=0.7,
        trajectory_len=t,
        on_nonfinite="skip",
        device=case.device,
        backend=case.backend,
        prev_topk=k,
    )
    for batches in epochs:
        for logits, index in batches:
            tr.update(*case.to(torch.from_numpy(logits), torch.from_numpy(index)))
        tr.end_epoch()
    expected = torch.from_numpy(dense_scores(epochs, n, w, 0.7, prev_topk=k)).float()
    torch.testing.assert_close(tr.scores().cpu(), expected, rtol=1e-4, atol=1e-5)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_batches_topk(other, data):
    """The fuzz below with a compressed previous row of any K <= C."""
    update = other.need_topk()
    n = data.draw(st.integers(1, 30), label="n")
    c = data.draw(st.sampled_from([1, 3, 16, 33] if other.small else [1, 3, 16, 33, 257]), label="c")
    k = data.draw(st.integers(1, c), label="k")
    storage = data.draw(st.sampled_from(STORAGE), label="storage")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    state = other.to(*make_topk_state(n, c, 3, k, storage, data.draw(st.integers(0, 6), label="epoch"), seed))
    g = torch.Generator().manual_seed(seed)
    for _ in range(data.draw(st.integers(1, 3), label="batches")):
        b = data.draw(st.integers(0, 40 if other.small else 150), label="b")
        index = torch.randint(-1, data.draw(st.integers(1, n + 3), label="pool"), (b,), generator=g)
        logits = torch.randn(b, c, generator=g) * 5
        if b:
            logits[torch.rand(b, generator=g) < 0.1, 0] = float("nan")
        out, ref = run_update_topk(update, *other.to(logits, index), state)
        assert_topk_state(out, ref, storage)
        state = out


# ------------------------------------------------------------------ targets: baselines' row stats
ROW_TOL = {  # correct is exact; NaN (rows not applied, bad targets) must match exactly
    "el2n": dict(rtol=1e-5, atol=1e-6),
    "margin": dict(rtol=1e-5, atol=1e-5),
    "target_prob": dict(rtol=1e-5, atol=1e-7),
}


def targets_batch(n, c, b, seed, index_dtype=torch.int64, target_dtype=torch.int64):
    """(logits, index, targets) with every row kind the row stats must handle: duplicates (in the
    batch and of samples seen this epoch), out-of-range indices, non-finite rows, targets outside
    [0, C), ties for the largest logit (argmax takes the lowest class), a one-hot-like row whose
    other classes underflow exp, a row whose largest logit is far above its first, and correct
    rows (target = argmax)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(-1, n + 1, (b,), generator=g)
    logits = torch.randn(b, c, generator=g) * 4
    targets = torch.randint(0, c, (b,), generator=g)
    kinds = torch.randint(0, 8, (b,), generator=g)
    best = logits.argmax(dim=1)
    targets = torch.where(kinds == 0, best, targets)  # correct
    if c > 1:
        tie = (kinds == 1).nonzero().squeeze(1)
        logits[tie, (best[tie] + 1) % c] = logits[tie, best[tie]]  # tied with the largest
        targets[tie] = torch.where(torch.rand(tie.numel(), generator=g) < 0.5, best[tie], (best[tie] + 1) % c)
    targets[kinds == 2] = c  # outside [0, C)
    targets[kinds == 3] = -1
    logits[kinds == 4, 0] = float("nan")
    big = (kinds == 5).nonzero().squeeze(1)
    logits[big] = -200.0
    logits[big, targets[big]] = 200.0
    # the largest logit 50 above the first: exp(x − x[0]) reaches e^50 (its square overflows float)
    far = (kinds == 6).nonzero().squeeze(1)
    logits[far, targets[far]] = logits[far, 0] + 50.0
    return logits, index.to(index_dtype), targets.to(target_dtype)


def assert_row_stats(out, ref):
    out = out.cpu()
    assert torch.equal(out.isnan(), ref.isnan()), "row_stats: NaN pattern (rows applied / targets usable)"
    assert torch.equal(out[:, CORRECT].nan_to_num(-1), ref[:, CORRECT].nan_to_num(-1)), "row_stats: correct"
    for col, name in ((EL2N, "el2n"), (MARGIN, "margin"), (TARGET_PROB, "target_prob")):
        torch.testing.assert_close(
            out[:, col], ref[:, col], equal_nan=True, **ROW_TOL[name], msg=lambda m, n=name: f"row_stats {n}: {m}"
        )


@pytest.mark.parametrize("logits_dtype", LOGITS)
@pytest.mark.parametrize("b,c", [(1, 1), (29, 2), (40, 100), (97, 1271), (5, 32000)])
def test_row_stats_match_reference(other, logits_dtype, b, c):
    """update with targets writes the baselines' per-row quantities of the applied rows (NaN
    elsewhere) and leaves the TDDS state exactly as the update without them."""
    if other.small and c * b > 20000 and c != 32000:
        pytest.skip("interpreted Triton: the wide-row path is covered by C=32000 with few rows")
    n = 2 * b + 3
    for (name, update), epoch in itertools.product(other.updates, (0, 3)):
        prev, seen, ring, _, counters = make_state(n, c, 4, torch.float32, epoch, seed=b + c + epoch)
        logits, index, targets = targets_batch(n, c, b, seed=b * c + epoch)
        logits = logits.to(logits_dtype)
        out = clone(other.to(prev, seen, ring, counters))
        stats = torch.full((b, len(ROW_STATS)), 7.0, device=other.device)  # every row gets written
        update(*other.to(logits, index), *out, *other.to(targets), stats)
        ref = clone((prev, seen, ring, counters))
        ref_stats = torch.empty(b, len(ROW_STATS))
        REF_UPDATE(logits, index, *ref, targets, ref_stats)
        assert_update_state(out, ref)
        assert_row_stats(stats, ref_stats)
        plain = clone(other.to(prev, seen, ring, counters))
        update(*other.to(logits, index), *plain)  # targets change nothing of TDDS's state
        for a, b_ in zip(cpu(plain), cpu(out)):
            assert torch.equal(a.nan_to_num(-9), b_.nan_to_num(-9)), name


def test_row_stats_reference_statement():
    """The reference's row stats against a per-row Python restatement of the definitions."""
    n, c, b = 9, 6, 30
    prev, seen, ring, _, counters = make_state(n, c, 3, torch.float32, epoch=2, seed=1)
    logits, index, targets = targets_batch(n, c, b, seed=3)
    stats = torch.empty(b, len(ROW_STATS))
    applied_seen = seen.clone()
    REF_UPDATE(logits, index, prev, applied_seen, ring, counters, targets, stats)
    claimed = set(int(i) for i in (seen == 2).nonzero().squeeze(1))
    for row in range(b):
        i, y, z = int(index[row]), int(targets[row]), logits[row].double()
        applied = 0 <= i < n and bool(torch.isfinite(z).all()) and i not in claimed
        if applied:
            claimed.add(i)
        if not applied or not 0 <= y < c:
            assert stats[row].isnan().all(), row
            continue
        p = torch.softmax(z, dim=0)
        first_max = min(j for j in range(c) if z[j] == z.max())
        assert stats[row, CORRECT] == float(first_max == y), row
        err = p.clone()
        err[y] -= 1
        others = max(float(z[j]) for j in range(c) if j != y)
        expected = [err.norm(), float(z[y]) - others, p[y]]
        torch.testing.assert_close(
            stats[row, 1:].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32])
def test_row_stats_topk_match_reference(other, target_dtype):
    other.need_topk()
    n, c, b, k = 40, 50, 60, 4
    state = make_topk_state(n, c, 3, k, epoch=2, seed=4)
    logits, index, targets = targets_batch(n, c, b, seed=5, index_dtype=torch.int32, target_dtype=target_dtype)
    ref = clone(state)
    ref_stats = torch.empty(b, len(ROW_STATS))
    REF_UPDATE_TOPK(logits, index, *ref, targets, ref_stats)
    for _, update in other.topk_updates:  # chunk16: the row stats over several chunks
        out = clone(other.to(*state))
        stats = torch.full((b, len(ROW_STATS)), 7.0, device=other.device)
        update(*other.to(logits, index), *out, *other.to(targets), stats)
        assert_topk_state(out, ref)
        assert_row_stats(stats, ref_stats)


def test_opcheck_targets(case):
    prev, seen, ring, _, counters = case.to(*make_state(8, 5, 3, torch.float32, epoch=1))
    logits, index, targets = case.to(torch.randn(5, 5), torch.tensor([0, 2, 2, 7, 9]), torch.tensor([1, 0, 4, 5, -1]))
    stats = torch.empty(5, len(ROW_STATS), device=case.device)
    torch.library.opcheck(case.update.default, (logits, index, prev, seen, ring, counters, targets, stats))


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda t, r: (t, None), "targets and row_stats must be given together"),
        (lambda t, r: (None, r), "targets and row_stats must be given together"),
        (lambda t, r: (t.float(), r), "targets must be a contiguous"),
        (lambda t, r: (t[:4], r), "targets must be a contiguous"),
        (lambda t, r: (t, r[:, :3]), "row_stats must be a contiguous"),
        (lambda t, r: (t, r.double()), "row_stats must be a contiguous"),
    ],
    ids=["no-row-stats", "no-targets", "float-targets", "short-targets", "three-columns", "float64-stats"],
)
def test_bad_targets_name_the_argument(other, bad, message):
    """The compiled backends check targets / row_stats (metadata only) before launching."""
    prev, seen, ring, _, counters = other.to(*make_state(8, 5, 3, torch.float32, epoch=1))
    logits, index, targets = other.to(torch.randn(5, 5), torch.tensor([0, 2, 2, 7, 9]), torch.tensor([1, 0, 4, 5, -1]))
    t, r = bad(targets, torch.empty(5, len(ROW_STATS), device=other.device))
    with pytest.raises((ValueError, RuntimeError), match=message):
        other.update(logits, index, prev, seen, ring, counters, t, r)


# ------------------------------------------------------------------ fuzz
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_batches(other, data):
    """Random batch/index patterns: in-batch duplicates, repeats across batches, out-of-range and
    non-finite rows, any seen state, epoch, window and storage dtype."""
    n = data.draw(st.integers(1, 40), label="n")
    c = data.draw(st.sampled_from([1, 3, 16, 33] if other.small else [1, 3, 16, 33, 257, 600]), label="c")
    w = data.draw(st.integers(2, 6), label="w")
    epoch = data.draw(st.integers(0, 8), label="epoch")
    storage = data.draw(st.sampled_from(STORAGE), label="storage")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    prev, seen, ring, _, counters = make_state(n, c, w, storage, epoch, seed)
    state = other.to(prev, seen, ring, counters)
    g = torch.Generator().manual_seed(seed)
    for _ in range(data.draw(st.integers(1, 3), label="batches")):
        b = data.draw(st.integers(0, 40 if other.small else 200), label="b")
        pool = data.draw(st.integers(1, n + 3), label="pool")  # small pools force duplicates
        index = torch.randint(-1, pool, (b,), generator=g)
        logits = torch.randn(b, c, generator=g) * 5
        if b:
            logits[torch.rand(b, generator=g) < 0.1, 0] = float("nan")
        out, ref = run_update(other.update, *other.to(logits, index), state)
        assert_update_state(out, ref, storage)
        state = out


# ------------------------------------------------------------------ whole trackers
@pytest.mark.filterwarnings("ignore:TDDSTracker. .* duplicates")
@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("w,t", [(3, 5), (4, 4), (5, 9)])  # W = T: a single window
def test_tracker_matches_dense_oracle(case, storage, w, t):
    n, c = (20, 7) if case.small else (60, 23)
    epochs = random_epochs(np.random.default_rng(w * 10 + t), n, c, t, p_missing=0.1, p_dup=0.1, p_nonfinite=0.05)
    tr = tk.TDDSTracker(
        n,
        c,
        window=w,
        decay=0.7,
        trajectory_len=t,
        storage_dtype=storage,
        on_nonfinite="skip",
        device=case.device,
        backend=case.backend,
    )
    for batches in epochs:
        for logits, index in batches:
            tr.update(*case.to(torch.from_numpy(logits), torch.from_numpy(index)))
        tr.end_epoch()
    assert tr.complete
    tol = {torch.float32: 2e-5, torch.bfloat16: 0.05, torch.float16: 0.01}[storage]
    expected = torch.from_numpy(dense_scores(epochs, n, w, 0.7)).float()
    torch.testing.assert_close(tr.scores().cpu(), expected, rtol=tol, atol=tol)
    rows = [np.concatenate([i for _, i in b]) for b in epochs]
    finite = [np.concatenate([np.isfinite(l).all(1) for l, _ in b]) for b in epochs]
    recorded = sum(np.unique(r[f]).size for r, f in zip(rows, finite))
    assert tr.stats["missing"] == n * t - recorded
    assert tr.stats["nonfinite"] == sum(int((~f).sum()) for f in finite)
    assert tr.stats["duplicates"] == sum(int(f.sum()) for f in finite) - recorded


def load_fixture(name):
    d = FIXTURES / name
    params = json.loads((d / "params.json").read_text())
    epochs = [(np.load(d / f"{t}_Output.npy"), np.load(d / f"{t}_Index.npy")) for t in range(params["trajectory_len"])]
    return params, epochs, np.load(d / "expected_scores.npy")


@pytest.mark.parametrize("name", ["small_c10", "medium_c100"])
@pytest.mark.parametrize("seed", [0, 1])
def test_release_fixtures(case, name, seed):
    # expected_scores.npy was computed in float64 end to end; the contract's float32 softmax
    # leaves ~1e-7 absolute error per contribution, so tiny scores get an absolute floor.
    if case.small and (seed or name == "small_c10"):
        pytest.skip("interpreted Triton: one fixture in one loader order is enough (small_c10 ~70 s)")
    params, epochs, expected = load_fixture(name)
    rng = np.random.default_rng(seed)
    tracker = tk.TDDSTracker(
        params["num_samples"],
        params["num_classes"],
        window=params["window_size"],
        decay=params["decay"],
        trajectory_len=params["trajectory_len"],
        device=case.device,
        backend=case.backend,
    )
    for logits, index in epochs:
        order = rng.permutation(len(index))  # the loader's order must not matter
        cuts = np.sort(rng.choice(np.arange(1, len(index)), size=rng.integers(1, 12), replace=False))
        for part in np.split(order, cuts):
            tracker.update(*case.to(torch.from_numpy(logits[part]), torch.from_numpy(index[part])))
        tracker.end_epoch()
    assert tracker.complete
    scores = tracker.scores().cpu().double()
    torch.testing.assert_close(scores, torch.from_numpy(expected), rtol=1e-5, atol=2e-6)
    # Same ranking where scores are not within rounding of each other: the kept sets agree.
    for frac in (0.3, 0.7, 0.9):
        a = set(tk.select(scores, prune_fraction=frac).tolist())
        b = set(tk.select(torch.from_numpy(expected), prune_fraction=frac).tolist())
        assert len(a ^ b) <= 2, (frac, len(a ^ b))
