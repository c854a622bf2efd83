"""The C++ extension's CUDA kernels against the reference on the same GPU. Skipped without a
GPU (never faked); benchmarks/gpu_check.sh runs these on a lent GPU after a FORCE_CUDA build."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdds_kernels as tk
from tdds_kernels._ops import DUPLICATES, EPOCH, MISSING, NONFINITE, OUT_OF_RANGE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: CUDA kernels not tested")

# Imported here rather than at module level so a missing or broken build fails (or skips) these
# tests one by one instead of stopping pytest's collection, which would lose every other test.
try:
    import tdds_kernels._C  # noqa: F401
    from test_ext_cpu import assert_state_close, clone, poisoned_state, reference_with_winners
    EXT_ERROR = None
    EXT_UPDATE, EXT_STEP = torch.ops.tdds.update_ext, torch.ops.tdds.epoch_step_ext
except (ImportError, AttributeError, pytest.skip.Exception) as exc:
    EXT_ERROR = f"{type(exc).__name__}: {exc}"
STORAGE = [torch.float32, torch.bfloat16, torch.float16]  # as in test_ext_cpu
LOGITS = [torch.float32, torch.float16, torch.bfloat16]
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
    return tuple(t.to(DEV) for t in poisoned_state(*args, **kw))


def run_both(logits, index, state):
    ext = clone(state)
    EXT_UPDATE(logits, index, *ext)
    return ext, reference_with_winners(logits, index, state, ext[0])


def cpu(state):
    return tuple(t.cpu() for t in state)


def test_cuda_kernels_are_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tdds::update_ext", "CUDA"), \
        "the extension was built without CUDA kernels (build with FORCE_CUDA=1)"
    assert tk.TDDSTracker(10, 3, window=2, device=DEV, backend="cuda").backend == "cuda"


@pytest.mark.parametrize("storage", STORAGE)
def test_opcheck_cuda(storage):
    prev, seen, ring, score, counters = cuda_state(8, 5, 3, storage, epoch=0)
    logits = torch.randn(5, 5, device=DEV)
    index = torch.tensor([0, 2, 2, 7, 9], device=DEV)
    torch.library.opcheck(EXT_UPDATE.default, (logits, index, prev, seen, ring, counters))
    torch.library.opcheck(EXT_STEP.default, (seen, ring, score, counters, 0.9))


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("logits_dtype", LOGITS)
@pytest.mark.parametrize("b,c", [(1, 1), (13, 7), (40, 100), (300, 1000), (97, 1271), (8, 40000)])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_update_matches_reference_cuda(storage, logits_dtype, b, c, index_dtype):
    n, w = 3 * b + 5, 4
    for epoch in (0, 1, 5):
        prev, seen, ring, _, counters = cuda_state(n, c, w, storage, epoch=epoch, seed=b + c + epoch)
        index = torch.randperm(n, device=DEV)[:b].to(index_dtype)
        logits = (torch.randn(b, c, device=DEV) * 4).to(logits_dtype)
        ext, ref = run_both(logits, index, (prev, seen, ring, counters))
        assert_state_close(cpu(ext), cpu(ref), storage)
        untouched = torch.ones(n, dtype=torch.bool, device=DEV)
        untouched[index.long()] = False
        assert torch.equal(ext[0][untouched], prev[untouched]) and torch.equal(ext[2][untouched], ring[untouched])


@pytest.mark.parametrize("w", [2, 3, 10])
def test_epoch_step_matches_reference_cuda(w):
    n = 1000
    for epoch in (0, 1, w - 1, w, w + 7):
        _, seen, _, _, counters = cuda_state(n, 3, w, epoch=max(epoch, 1), seed=epoch)
        counters[EPOCH] = epoch
        ring = torch.rand(n, w - 1, device=DEV)
        ring[torch.rand(n, w - 1, device=DEV) < 0.3] = float("nan")
        score = torch.rand(n, device=DEV)
        ext, ref = clone((seen, ring, score, counters)), clone((seen, ring, score, counters))
        EXT_STEP(*ext, 0.8)
        REF_STEP(*ref, 0.8)
        assert ext[3].tolist() == ref[3].tolist() and ext[3][EPOCH] == epoch + 1
        torch.testing.assert_close(ext[1], ref[1], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(ext[2], ref[2], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("c", [5, 1000])
def test_in_batch_duplicates_cuda(c):
    for epoch in (0, 1):
        prev, seen, ring, _, counters = cuda_state(8, c, 3, epoch=epoch, seed=c)
        index = torch.randint(0, 8, (4096,), device=DEV)  # hundreds of warps race per sample
        logits = torch.randn(4096, c, device=DEV) * 3
        ext, ref = run_both(logits, index, (prev, seen, ring, counters))
        assert_state_close(cpu(ext), cpu(ref))


def test_edge_rows_cuda():
    prev, seen, ring, _, counters = cuda_state(6, 40, 3, epoch=1)
    seen.fill_(0)
    logits = torch.randn(6, 40, device=DEV)
    logits[1, 3] = float("nan")
    logits[2, 5] = -float("inf")
    index = torch.tensor([0, 1, 2, -1, 6, 0], device=DEV)  # non-finite x2, out of range x2, dup
    ext, ref = run_both(logits, index, (prev, seen, ring, counters))
    assert_state_close(cpu(ext), cpu(ref))
    c = ext[3].tolist()
    assert c[NONFINITE] == 7 + 2 and c[OUT_OF_RANGE] == 8 + 2 and c[DUPLICATES] == 5 + 1 and c[MISSING] == 6


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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_batches_cuda(data):
    n = data.draw(st.integers(1, 40))
    c = data.draw(st.sampled_from([1, 3, 33, 600]))
    w = data.draw(st.integers(2, 6))
    epoch = data.draw(st.integers(0, 8))
    storage = data.draw(st.sampled_from(STORAGE))
    state = cuda_state(n, c, w, storage, epoch=epoch, seed=data.draw(st.integers(0, 2**31 - 1)))
    prev, seen, ring, _, counters = state
    for _ in range(data.draw(st.integers(1, 3))):
        b = data.draw(st.integers(0, 300))
        pool = data.draw(st.integers(1, n + 3))
        index = torch.randint(-1, pool, (b,), device=DEV)
        logits = torch.randn(b, c, device=DEV) * 5
        if b:
            logits[torch.rand(b, device=DEV) < 0.1, 0] = float("nan")
        ext, ref = run_both(logits, index, (prev, seen, ring, counters))
        assert_state_close(cpu(ext), cpu(ref), storage)
        prev, seen, ring, counters = ext
