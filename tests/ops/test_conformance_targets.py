"""Op conformance, targets=: the baselines' row stats written by the update.

The conformance suite's scenarios (tests/support/conformance.py says how pairs are compared).
"""

import itertools

import pytest
import torch

from tdds_kernels.ops.schema import CORRECT, ROW_STATS

from tests.support import conformance
from tests.support.conformance import (
    LOGITS,
    REF_UPDATE,
    REF_UPDATE_TOPK,
    assert_row_stats,
    assert_topk_state,
    assert_update_state,
    cpu,
    make_topk_state,
    targets_batch,
)
from tests.support.helpers import clone, make_state

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")
case = conformance.pairs(**conformance.CASE)
other = conformance.pairs(**conformance.OTHER)


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
