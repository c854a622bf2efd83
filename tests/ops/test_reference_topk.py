"""The compressed previous row (prev_topk, docs/design.md §2.1): the reference op against the
dense float64 oracle (tests/support/dense.py), and its exactness at K = C."""

import numpy as np
import pytest
import torch

from tdds_kernels.ops import reference_topk
from tdds_kernels.ops.schema import topk_index_dtype

from tests.support.dense import compressed_row, dense_scores
from tests.support.helpers import feed, make_state, make_tracker, random_epochs


@pytest.mark.parametrize("k", [1, 3, 8])
def test_tracker_matches_dense_oracle(k):
    # Missing, duplicate and non-finite rows: the compressed row follows the same row rules.
    rng = np.random.default_rng(k)
    n, c, t, w = 23, 9, 7, 3
    epochs = random_epochs(rng, n, c, t, p_missing=0.15, p_dup=0.2, p_nonfinite=0.05)
    tracker = make_tracker(num_samples=n, num_classes=c, window=w, decay=0.7, trajectory_len=t, prev_topk=k)
    tracker.on_nonfinite = "skip"
    feed(tracker, epochs)
    want = dense_scores(epochs, n, w, 0.7, t, prev_topk=k)
    np.testing.assert_allclose(tracker.scores().numpy(), want, rtol=1e-4, atol=1e-5)
    if k < c - 1:  # the compression changes the result: the oracle's two forms tell apart
        assert not np.allclose(want, dense_scores(epochs, n, w, 0.7, t), rtol=1e-3, atol=1e-4)


def _topk_state(prev, k, storage):
    # A compressed state holding the same previous rows as `prev` (their p recovered).
    p = torch.exp(prev.float())
    values, ids, rest = reference_topk.compress(p, torch.log(p + 1e-8), k)
    return values.to(storage), ids.to(topk_index_dtype(prev.shape[1])), rest.to(storage)


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
def test_op_with_k_equal_c_is_the_full_row_bit_for_bit(storage):
    n, c, w = 40, 11, 4
    prev, seen, ring, score, counters = make_state(n, c, w, storage)
    val, idx, rest = _topk_state(prev, c, storage)
    full_prev = torch.empty_like(prev).scatter_(1, idx.long(), val)  # the same row, by class
    logits = torch.randn(60, c) * 4
    index = torch.randint(0, n, (60,))
    a = (full_prev, seen.clone(), ring.clone(), counters.clone())
    b = (val, idx, rest, seen.clone(), ring.clone(), counters.clone())
    torch.ops.tdds.update(logits, index, *a)
    torch.ops.tdds.update_topk(logits, index, *b)
    torch.testing.assert_close(b[4], a[2], rtol=0, atol=0, equal_nan=True)  # ring: the d's
    assert torch.equal(b[3], a[1]) and torch.equal(b[5], a[3])
    # The stored rows are the full row's values, in another order.
    assert torch.equal(torch.empty_like(a[0]).scatter_(1, b[1].long(), b[0]), a[0])


def test_tracker_with_k_at_least_c_keeps_full_rows():
    rng = np.random.default_rng(0)
    epochs = random_epochs(rng, 12, 5, 5, p_dup=0.2)
    full = make_tracker(num_samples=12, num_classes=5, window=3, trajectory_len=5)
    wide = make_tracker(num_samples=12, num_classes=5, window=3, trajectory_len=5, prev_topk=9)
    assert wide.prev_topk is None and "prev" in wide.state_dict()
    feed(full, epochs)
    feed(wide, epochs)
    assert torch.equal(full.scores(), wide.scores())


def test_stored_values_ties_and_residual():
    # p = (0.4, 0.2, 0.2, 0.1, 0.1): K = 2 keeps class 0 and, of the tie, the lower id 1.
    p = torch.tensor([[0.4, 0.2, 0.2, 0.1, 0.1]])
    logits = torch.log(p)
    val = torch.zeros(1, 2)
    idx = torch.zeros(1, 2, dtype=torch.int16)
    rest = torch.zeros(1)
    seen = torch.full((1,), -1, dtype=torch.int32)
    ring = torch.full((1, 2), float("nan"))
    counters = torch.zeros(5, dtype=torch.int64)
    torch.ops.tdds.update_topk(logits, torch.zeros(1, dtype=torch.long), val, idx, rest, seen, ring, counters)
    assert idx.tolist() == [[0, 1]]
    q = torch.softmax(logits, 1)[0].double()
    torch.testing.assert_close(val[0].double(), torch.log(q[:2] + 1e-8), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rest[0].double(), torch.log(q[2:].mean() + 1e-8), rtol=1e-6, atol=1e-7)
    kept, logs, rest_log = compressed_row(q.numpy(), 2)  # the oracle says the same
    assert kept == [0, 1]
    np.testing.assert_allclose(logs, val[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(rest_log, rest.item(), rtol=1e-6)


def test_index_dtype_is_the_narrowest_that_holds_c():
    assert topk_index_dtype(1000) == torch.int16
    assert topk_index_dtype(2**15) == torch.int16  # ids 0..32767
    assert topk_index_dtype(2**15 + 1) == torch.int32
    assert topk_index_dtype(21841) == torch.int16
    t = make_tracker(num_samples=3, num_classes=40000, window=3, trajectory_len=3, prev_topk=4)
    assert t.state_dict()["prev_idx"].dtype == torch.int32
