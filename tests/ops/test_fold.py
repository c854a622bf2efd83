"""tdds::fold_baselines (the baselines' per-sample fold of row_stats): the C++ CPU kernel against
the reference statement, bit for bit, and both against the rule written out per row."""

import pytest
import torch

from tdds_kernels.ops import registry, schema
from tdds_kernels.ops.schema import CORRECT, EL2N, MARGIN, RING_COL, ROW_STATS, TARGET_PROB

REF = torch.ops.tdds.fold_baselines
EXT = registry.fold_op("cpu")
needs_ext = pytest.mark.skipif(EXT is REF, reason="the C++ extension has no CPU fold kernel in this build")


def make_case(n, b, window, seed, index_dtype=torch.int64):
    """(row_stats, index, packed): about a third of the rows without stats (NaN), the others
    on distinct samples (as the update guarantees), some stats rows correct, a packed state with
    counts, flags and NaN ring entries."""
    g = torch.Generator().manual_seed(seed)
    packed = torch.rand(n + 1, RING_COL + window, generator=g, dtype=torch.float64)
    packed[:, 0] = torch.randint(0, 3, (n + 1,), generator=g).double()  # count (0: never recorded)
    packed[:, 1] = torch.randint(0, 4, (n + 1,), generator=g).double()
    packed[:, 2:4] = torch.randint(0, 2, (n + 1, 2), generator=g).double()  # last_correct, learned
    packed[torch.rand(n + 1, generator=g) < 0.3, 4] = float("nan")
    packed[:, RING_COL:][torch.rand(n + 1, window, generator=g) < 0.3] = float("nan")
    index = torch.randint(-2, n + 2, (b,), generator=g)
    with_stats = torch.rand(b, generator=g) < 0.66
    with_stats[:] &= (index >= 0) & (index < n)
    distinct = torch.randperm(n, generator=g)[:b]
    index = torch.where(with_stats, distinct[:b] if n >= b else index, index)
    stats = torch.rand(b, len(ROW_STATS), generator=g)
    stats[:, CORRECT] = torch.randint(0, 2, (b,), generator=g).float()
    stats[:, MARGIN] = torch.randn(b, generator=g) * 5
    stats[~with_stats] = float("nan")
    return stats, index.to(index_dtype), packed


def by_rule(stats, index, packed, epoch, el2n_epoch):
    out = packed.clone()
    window = packed.shape[1] - RING_COL
    for b in range(stats.shape[0]):
        if torch.isnan(stats[b, CORRECT]):
            continue
        row = out[int(index[b])]
        correct = float(stats[b, CORRECT] == 1)
        if row[0] > 0 and row[2] == 1 and not correct:
            row[1] += 1
        row[3] = max(float(row[3]), correct)
        row[2] = correct
        if el2n_epoch < 0 or el2n_epoch == epoch:
            row[4] = float(stats[b, EL2N])
        row[5] += float(stats[b, MARGIN])
        row[0] += 1
        row[RING_COL + epoch % window] = float(stats[b, TARGET_PROB])
    return out


@pytest.mark.parametrize("el2n_epoch", [-1, 3, 5])
@pytest.mark.parametrize("window", [2, 5])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_reference_follows_the_rule(el2n_epoch, window, index_dtype):
    stats, index, packed = make_case(200, 120, window, seed=window + el2n_epoch)
    want = by_rule(stats, index, packed, 3, el2n_epoch)
    got = packed.clone()
    REF(stats, index, got, torch.tensor(3), el2n_epoch)
    torch.testing.assert_close(got[:-1], want[:-1], rtol=0, atol=0, equal_nan=True)  # row N: the spare


@needs_ext
@pytest.mark.parametrize("el2n_epoch", [-1, 7, 2])
@pytest.mark.parametrize("window", [2, 5, 9])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("n,b", [(1, 1), (50, 30), (5000, 4096)])
def test_cpu_kernel_matches_reference_bit_for_bit(n, b, index_dtype, window, el2n_epoch):
    stats, index, packed = make_case(n, b, window, seed=n + b + window, index_dtype=index_dtype)
    for epoch in (0, 7, 11):
        ref, ext = packed.clone(), packed.clone()
        REF(stats, index, ref, torch.tensor(epoch), el2n_epoch)
        EXT(stats, index, ext, torch.tensor(epoch), el2n_epoch)
        torch.testing.assert_close(ext[:-1], ref[:-1], rtol=0, atol=0, equal_nan=True)


def test_schemas_and_opcheck():
    stats, index, packed = make_case(20, 12, 3, seed=1)
    for op in {REF, EXT}:
        assert schema.schema_of(op.default) == schema.FOLD_SCHEMA
        torch.library.opcheck(op.default, (stats, index, packed.clone(), torch.tensor(2), -1))


@needs_ext
def test_cpu_kernel_rejects_bad_arguments():
    stats, index, packed = make_case(20, 12, 3, seed=2)
    with pytest.raises(ValueError, match="packed must be"):
        EXT(stats, index, packed.float(), torch.tensor(1), -1)
    with pytest.raises(ValueError, match="index must be"):
        EXT(stats, index[:5], packed, torch.tensor(1), -1)
    with pytest.raises(ValueError, match="epoch must be"):
        EXT(stats, index, packed, torch.tensor([1]), -1)
