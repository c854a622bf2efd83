"""Rows whose element offset n·C passes 2^31 (N = 70,000, C = 32,000: 2.24e9 elements, a 4.5 GB
bfloat16 `prev`), on each CUDA backend, against the reference op run on CPU copies of those rows
(the update is per sample, so a small state holding just them is the same computation).

ImageNet's N·C (1.28e9) stays below 2^31 elements; only its fp32 byte offsets pass it. These
shapes are where a 32-bit element offset would wrap. Needs a CUDA GPU with ~6 GB free (skipped
without one, never faked).
"""

import pytest
import torch

from tdds_kernels.ops.schema import EPOCH, NUM_SLOTS, ROW_STATS

from tests.support.helpers import cuda_backend_or_skip

CUDA = torch.cuda.is_available()
N, C, W = 70_000, 32_000, 3
# Rows around the first one past 2^31 elements (67,109 · 32,000 > 2^31), the last row, a low one.
ROWS = [5, 67_100, 67_108, 67_109, 67_110, 69_999]
UNTOUCHED = 67_111  # a row past 2^31 that is not in the batch


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU: offsets beyond 2^31 elements not tested")
@pytest.mark.parametrize("with_targets", [False, True])
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_rows_past_two_to_the_31_elements(name, with_targets):
    ops = cuda_backend_or_skip(name)
    if torch.cuda.mem_get_info()[0] < 6e9:
        pytest.skip("needs ~6 GB of free GPU memory")
    g = torch.Generator().manual_seed(11)
    k = len(ROWS)
    # CPU copies of the rows the batch touches (and one it does not): the oracle's state.
    prev_rows = torch.log(torch.softmax(torch.randn(k + 1, C, generator=g) * 3, dim=1) + 1e-8).to(torch.bfloat16)
    seen_rows = torch.tensor([0, 0, -1, 0, 0, 0, 0], dtype=torch.int32)  # epoch 0 recorded: d defined
    ring_rows = torch.rand(k + 1, W - 1, generator=g)
    # The batch: every row once, the row past 2^31 twice (its second copy a duplicate), and an
    # out-of-range index.
    batch_rows = list(range(k)) + [3, k + 1]
    z = (torch.randn(len(batch_rows), C, generator=g) * 3).to(torch.bfloat16)
    y = torch.randint(0, C, (len(batch_rows),), generator=g)

    prev = torch.zeros(N, C, dtype=torch.bfloat16, device="cuda")
    seen = torch.full((N,), -1, dtype=torch.int32, device="cuda")
    ring = torch.zeros(N, W - 1, device="cuda")
    counters = torch.zeros(NUM_SLOTS, dtype=torch.int64, device="cuda")
    counters[EPOCH] = 1
    where = torch.tensor(ROWS + [UNTOUCHED], device="cuda")
    prev[where] = prev_rows.cuda()
    seen[where] = seen_rows.cuda()
    ring[where] = ring_rows.cuda()
    index = torch.tensor([ROWS[r] if r < k else N + 5 for r in batch_rows], device="cuda")
    extra = (y.cuda(), torch.empty(len(batch_rows), len(ROW_STATS), device="cuda")) if with_targets else ()
    ops.update(z.cuda(), index, prev, seen, ring, counters, *extra)

    ref = [prev_rows.clone(), seen_rows.clone(), ring_rows.clone(), torch.zeros(NUM_SLOTS, dtype=torch.int64)]
    ref[3][EPOCH] = 1
    local = torch.tensor([r if r < k else k + 1 + 5 for r in batch_rows])  # out of range of k + 1 rows too
    ref_extra = (y, torch.empty(len(batch_rows), len(ROW_STATS))) if with_targets else ()
    torch.ops.tdds.update(z, local, *ref, *ref_extra)

    assert counters.cpu().tolist() == ref[3].tolist() and ref[3][0] == 1 and ref[3][3] == 1
    assert torch.equal(seen[where].cpu(), ref[1])
    torch.testing.assert_close(prev[where].cpu().float(), ref[0].float(), rtol=8e-3, atol=1e-5)
    torch.testing.assert_close(ring[where].cpu(), ref[2], rtol=1e-4, atol=1e-4, equal_nan=True)
    assert torch.equal(prev[UNTOUCHED].cpu(), prev_rows[k])  # the row not in the batch kept its values
    if with_targets:
        assert torch.equal(extra[1].isnan().cpu(), ref_extra[1].isnan())
        torch.testing.assert_close(extra[1].cpu(), ref_extra[1], rtol=1e-4, atol=1e-4, equal_nan=True)
