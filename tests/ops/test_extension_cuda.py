"""What is particular to the C++ extension's CUDA kernels (the contract itself is checked on
every (backend, device) pair by tests/ops/test_conformance_*.py): registration, the current
stream, CUDA-graph capture. Skipped without a GPU (never faked); benchmarks/gpu_check.sh runs
these on a lent GPU after a FORCE_CUDA build."""

import os

import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.ops.schema import DUPLICATES, EPOCH

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: CUDA kernels not tested")

# Imported here rather than at module level so a missing or broken build fails (or skips) these
# tests one by one instead of stopping pytest's collection, which would lose every other test.
try:
    import tdds_kernels._C  # noqa: F401

    EXT_ERROR = None
    EXT_UPDATE, EXT_STEP = torch.ops.tdds.update_ext, torch.ops.tdds.epoch_step_ext
except (ImportError, AttributeError) as exc:
    EXT_ERROR = f"{type(exc).__name__}: {exc}"

from tests.support.helpers import make_state  # noqa: E402

REF_UPDATE, REF_STEP = torch.ops.tdds.update, torch.ops.tdds.epoch_step


@pytest.fixture(autouse=True)
def _extension():
    # A GPU check that built the extension sets TDDS_REQUIRE_EXT=1: there a missing build fails.
    if EXT_ERROR is not None:
        msg = f"the C++ extension failed to import ({EXT_ERROR}); build it with FORCE_CUDA=1"
        if os.environ.get("TDDS_REQUIRE_EXT") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


DEV = "cuda"


def cuda_state(*args, **kw):
    state = make_state(*args, **kw)
    state[4][:4] = torch.tensor([5, 6, 7, 8])  # the counts the tests below add to
    return tuple(t.to(DEV) for t in state)


def test_cuda_kernels_are_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tdds::update_ext", "CUDA"), (
        "the extension was built without CUDA kernels (build with FORCE_CUDA=1)"
    )
    assert tk.TDDSTracker(10, 3, window=3, device=DEV, backend="cuda").backend == "cuda"


def test_runs_on_the_current_stream():
    # Would fail if the kernels launched on any stream but the current one (see the helper).
    from test_cuda_runtime import check_runs_on_current_stream

    check_runs_on_current_stream(EXT_UPDATE, EXT_STEP)


def test_cuda_graph_capture_and_replay_across_epochs():
    # The epoch lives on the device, so one captured step stays valid in every epoch. Capture
    # also fails if a kernel is launched on any stream but the current (capturing) one.
    prev, seen, ring, score, counters = cuda_state(32, 10, 3, epoch=0)
    seen.fill_(-1)
    logits, index = torch.randn(32, 10, device=DEV), torch.arange(32, device=DEV)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            EXT_UPDATE(logits, index, prev, seen, ring, counters)
            EXT_STEP(seen, ring, score, counters, 0.5)
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    assert counters[EPOCH] == 3 and (seen == 2).all() and counters[DUPLICATES] == 5


@pytest.mark.parametrize(
    "c,dtype",
    [(1001, torch.float32), (1271, torch.float32), (1003, torch.bfloat16), (21841, torch.bfloat16)],
)
def test_a_rows_bits_do_not_depend_on_its_place_in_the_batch(c, dtype):
    # The kernel loads 16-byte groups where a row is aligned and the same groups value by value
    # where it is not (C * itemsize not a multiple of 16: every other row or more), into the same
    # lanes; the threads per row come from C, not B. So one row gives the same bits of d, prev
    # and row_stats at any batch position and in any batch size. Shifting every row by one
    # position (an out-of-range row in front) changes each row's alignment and B: a lane mapping
    # that followed the alignment would change the fp32 sums' order and, almost surely, some bits.
    n = 24
    logits = (torch.randn(n, c, device=DEV) * 3).to(dtype)
    index = torch.arange(n, device=DEV)
    targets = torch.randint(0, c, (n,), device=DEV)
    shifted = (
        torch.cat([torch.zeros(1, c, device=DEV, dtype=dtype), logits]),
        torch.cat([torch.tensor([-1], device=DEV), index]),
        torch.cat([targets[:1], targets]),
    )
    out = []
    for z, i, y in ((logits, index, targets), shifted):
        prev, seen, ring, _, counters = cuda_state(n, c, 3, storage=dtype, epoch=1)
        seen.fill_(0)  # every sample recorded in e - 1: d is defined for every row
        stats = torch.empty(len(i), 4, device=DEV)
        EXT_UPDATE(z, i, prev, seen, ring, counters, y, stats)
        out.append((prev, ring, stats[-n:]))
    for got, want in zip(out[1], out[0]):
        torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)
    assert out[0][1][:, 0].isfinite().all()  # d was computed for every row: the check is not vacuous
