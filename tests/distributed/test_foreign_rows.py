"""The sync-free exchange hands the op other ranks' rows with distinct indices past the shard
(issue 19 item 2): the op skips and counts each as out of range and applies the rest exactly as
if the skipped rows were not there, on every backend (Triton under the interpreter)."""

import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.ops import registry
from tdds_kernels.ops.schema import COUNTERS, EPOCH, NUM_SLOTS, OUT_OF_RANGE

from tests.support.helpers import CPU_BACKENDS

N, C, W = 16, 5, 3


def _state(epoch=1):
    g = torch.Generator().manual_seed(3)
    counters = torch.zeros(NUM_SLOTS, dtype=torch.int64)
    counters[EPOCH] = epoch
    seen = torch.randint(-1, epoch + 1, (N,), generator=g, dtype=torch.int32)
    return [torch.randn(N, C, generator=g).log_softmax(1), seen, torch.rand(N, W - 1, generator=g), counters]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["distinct", "shared"])
def test_many_out_of_range_rows_are_skipped_and_counted(backend, layout):
    g = torch.Generator().manual_seed(7)
    own = torch.randint(0, N, (40,), generator=g)  # with duplicates: the first usable row counts
    foreign = 260
    past = N + torch.arange(foreign) if layout == "distinct" else torch.full((foreign,), N)
    index = torch.cat([own, past])[torch.randperm(40 + foreign, generator=g)]
    logits = torch.randn(40 + foreign, C, generator=g) * 3
    op = registry.resolve(backend, torch.device("cpu"))
    mixed, alone = _state(), _state()
    op.update(logits, index, *mixed)
    keep = index < N
    registry.resolve("reference", torch.device("cpu")).update(logits[keep], index[keep], *alone)
    assert int(mixed[3][OUT_OF_RANGE]) == foreign
    alone[3][OUT_OF_RANGE] += foreign
    for got, want, name in zip(mixed, alone, ("prev", "seen", "ring", "counters")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)


def test_record_routed_counts_only_the_rows_it_is_told():
    # The local tracker's door for routed rows: skipped rows count as out of range only as given.
    t = tk.TDDSTracker(N, C, window=W, backend="reference")
    index = torch.cat([torch.arange(4), N + torch.arange(100)])
    t.record_routed(torch.randn(104, C), index, None, 6, torch.tensor(2))
    assert t.stats["out_of_range"] == 2 and t.rows_in_epoch == 6
    assert dict(zip(COUNTERS, t.epoch_counts().values()))["out_of_range"] == 2
