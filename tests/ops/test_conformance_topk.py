"""Op conformance, the compressed previous row (tdds::update_topk*, docs/design.md §2.1).

The conformance suite's scenarios (tests/support/conformance.py says how pairs are compared).
"""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdds_kernels as tk
from tdds_kernels.ops.schema import DUPLICATES, EPOCH, NONFINITE, OUT_OF_RANGE

from tests.support import conformance
from tests.support.conformance import RING_TOL, STORAGE, assert_topk_state, make_topk_state, run_update_topk, tolerances
from tests.support.dense import dense_scores
from tests.support.helpers import random_epochs

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")
case = conformance.pairs(**conformance.CASE)
other = conformance.pairs(**conformance.OTHER)


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


def test_update_topk_old_row_tie_is_kept(other):
    # The old kept classes bound the selection from below (the cpu kernel starts its threshold
    # at their smallest new p): a class of a lower id tying that smallest p is kept in its place.
    other.need_topk()
    n, c, k = 6, 64, 4
    val, idx, rest, seen, ring, counters = make_topk_state(n, c, 3, k, epoch=1, seed=3)
    idx[0] = torch.tensor([10, 11, 12, 13], dtype=idx.dtype)  # sample 0 kept 10..13 last epoch
    seen[:] = 0  # recorded last epoch: every row below has a d
    z = torch.randn(n, c)
    z[0] = -2.0
    z[0, 10:13] = 5.0
    z[0, [3, 13]] = 1.0  # 13 (old kept) ties with 3: 3 is kept
    index = torch.arange(n)
    for _, update in other.topk_updates:
        out, ref = run_update_topk(update, *other.to(z, index), other.to(val, idx, rest, seen, ring, counters))
        assert_topk_state(out, ref)
        torch.testing.assert_close(out[4].cpu(), ref[4], equal_nan=True, **RING_TOL)
        assert sorted(out[1][0].tolist()) == [3, 10, 11, 12]


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
