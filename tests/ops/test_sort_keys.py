"""The update launchers' sort by sample with 32-bit keys (ops/triton/update.py sort_rows; the
CUDA extension builds the same keys): the chosen row of every sample is the one the 64-bit sort
gave, duplicates, out-of-range and huge indices included. Under the Triton interpreter on CPU."""

import pytest
import torch

import tdds_kernels.ops.triton as tt
from tdds_kernels.ops.schema import ROW_STATS
from tdds_kernels.ops.triton.update import sort_rows

from tests.support.helpers import make_state

pytestmark = pytest.mark.skipif(not tt.INTERPRETED, reason="Triton on CPU runs only under TRITON_INTERPRET=1")


def awkward_index(n, b, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (b,), generator=g)
    index[::3] = index[1]  # one sample many times
    bad = torch.randint(0, b, (b // 4,), generator=g)
    index[bad] = torch.tensor([-1, n, n + 1, -(2**30)])[torch.randint(0, 4, (bad.numel(),), generator=g)]
    if dtype == torch.int64:
        index[-3:] = torch.tensor([2**40, -(2**40), 2**32 + 1])  # would wrap into [0, N) as int32
    return index.to(dtype)


def expected(index, n):
    """Keys and a stable order, written out: the sample where it is in range, else N + row."""
    keys = [int(v) if 0 <= v < n else n + b for b, v in enumerate(index.tolist())]
    order = sorted(range(len(keys)), key=lambda b: (keys[b], b))
    return [keys[b] for b in order], order


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("n,b", [(5, 64), (100, 1000), (3, 8)])
def test_keys_are_the_samples_in_batch_order_and_distinct_outside(n, b, dtype):
    index = awkward_index(n, b, dtype, seed=n + b)
    keys, order = sort_rows(index, n)
    assert keys.dtype == torch.int32 and order.dtype == torch.int64
    want_keys, want_order = expected(index, n)
    assert keys.tolist() == want_keys and order.tolist() == want_order
    # The head of each in-range run is the sample's first row in batch order (what the 64-bit
    # sort gave); every out-of-range row is a run of its own.
    sorted64, order64 = torch.sort(index.to(torch.int64), stable=True)
    inside = (sorted64 >= 0) & (sorted64 < n)
    assert order[keys < n].tolist() == order64[inside].tolist()
    assert (keys[keys >= n].unique().numel()) == int((keys >= n).sum())


def test_wide_datasets_keep_64_bit_keys():
    index = torch.tensor([5, 2**31 + 3, 5, -1], dtype=torch.int64)
    keys, order = sort_rows(index, 2**31 - 2)  # N + B >= 2^31: 32-bit keys would not fit
    assert keys.dtype == torch.int64 and keys.tolist() == [-1, 5, 5, 2**31 + 3] and order.tolist() == [3, 0, 2, 1]
    keys, _ = sort_rows(index, None)
    assert keys.dtype == torch.int64


@pytest.mark.parametrize("with_targets", [False, True])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_update_applies_the_same_rows_as_the_reference(dtype, with_targets):
    # Duplicates with different logits (non-finite first copies) and out-of-range rows: the
    # state and counters must be the reference's, which states the first-usable-row rule.
    n, b, c, w = 40, 200, 7, 3
    index = awkward_index(n, b, dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(b, c, generator=g) * 3
    z[torch.arange(0, b, 7), 0] = float("nan")
    mine = list(make_state(n, c, w))
    theirs = [t.clone() for t in mine]
    extra, ref_extra = (), ()
    if with_targets:
        y = torch.randint(0, c, (b,), generator=g)
        extra = (y, torch.empty(b, len(ROW_STATS)))
        ref_extra = (y, torch.empty(b, len(ROW_STATS)))
    tt.update(z, index, mine[0], mine[1], mine[2], mine[4], *extra)
    torch.ops.tdds.update(z, index, theirs[0], theirs[1], theirs[2], theirs[4], *ref_extra)
    assert torch.equal(mine[1], theirs[1]) and mine[4].tolist() == theirs[4].tolist()
    torch.testing.assert_close(mine[0], theirs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine[2], theirs[2], rtol=1e-5, atol=1e-5, equal_nan=True)
    if with_targets:
        assert torch.equal(extra[1].isnan(), ref_extra[1].isnan())
        torch.testing.assert_close(extra[1], ref_extra[1], rtol=1e-5, atol=1e-5, equal_nan=True)
