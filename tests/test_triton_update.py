"""tdds::update_triton against the reference op on fresh random state (DESIGN.md §3).

Runs on CPU under TRITON_INTERPRET=1 (conftest) with small shapes, and on CUDA when there is a
GPU (set TRITON_INTERPRET=0 there to compile the kernels). The state is random and every buffer
is compared whole, so a row the kernel forgot to write, or one it should not have touched, shows.
Duplicate rows of one batch carry identical logits wherever the winner is not the point: a
parallel kernel may apply any one of them.
"""
import pytest
import torch

import tdds_kernels  # noqa: F401  (registers the reference ops)
from tdds_kernels.ops import registry as backends
from tdds_kernels.ops import schema as _ops

DEVICES = ["cpu", "cuda"]
# (C, forced chunk): one block; one block of 2048 lanes for 1271; chunked with a ragged tail;
# chunked at the large-vocabulary width (BLOCK = update.CHUNK).
SHAPES = [(10, None), (1271, None), (1271, 256), (32000, None)]
SHAPE_IDS = ["C10", "C1271", "C1271-chunk256", "C32000-chunked"]
# (logits dtype, storage dtype, atol, rtol of prev): prev holds log(p + 1e-8) rounded to the
# storage dtype, and the kernel's fp32 log may round to the neighbouring half-precision value.
DTYPES = [
    (torch.float32, torch.float32, 2e-6, 2e-6),
    (torch.float16, torch.float32, 2e-6, 2e-6),
    (torch.bfloat16, torch.float32, 2e-6, 2e-6),
    (torch.float32, torch.bfloat16, 1e-5, 8e-3),
    (torch.float16, torch.float16, 1e-5, 1e-3),
]
DTYPE_IDS = ["f32-f32", "f16-f32", "bf16-f32", "f32-bf16", "f16-f16"]
RING_TOL = dict(atol=1e-5, rtol=1e-5)  # d in fp32: exp/log rounding and summation order


def triton_ops(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = backends.unavailable_reason("triton", torch.device(device))
    if reason is not None:
        pytest.skip(reason)
    import tdds_kernels.ops.triton as tt
    return tt


def make_state(n, c, w1, storage, epoch, device):
    """prev as cached logs of real softmax rows; seen mixes never (-1), stale (e-2), previous
    epoch (e-1, so d is defined) and this epoch (e, so the row is a duplicate)."""
    prev = torch.log(torch.softmax(torch.randn(n, c) * 3, dim=1) + _ops.EPS).to(storage)
    seen = torch.randint(max(-1, epoch - 2), epoch + 1, (n,), dtype=torch.int32)
    seen[torch.rand(n) < 0.1] = -1
    ring = torch.rand(n, w1) * 5
    ring[torch.rand(n, w1) < 0.3] = float("nan")
    counters = torch.tensor([3, 5, 7, 11, epoch], dtype=torch.int64)  # kernels add to these
    return [t.to(device) for t in (prev, seen, ring, counters)]


def make_batch(n, c, dtype, device, b=12, index_dtype=torch.int64):
    """A batch of b rows over distinct samples, plus: a within-batch duplicate (same logits), two
    out-of-range indices, and rows with a NaN, a +inf and a -inf."""
    idx = torch.randperm(n)[:b]
    z = torch.randn(b, c) * 4
    idx = torch.cat([idx, idx[:1], torch.tensor([-1, n]), idx[1:4]])
    z = torch.cat([z, z[:1], torch.randn(2, c), torch.randn(3, c)])
    z[-3, c // 2] = float("nan")
    z[-2, 0] = float("inf")
    z[-1, c - 1] = float("-inf")
    # idx[1:4] appear twice: once finite (applied), once non-finite (skipped, never claimed),
    # in either order.
    perm = torch.randperm(idx.numel())
    return z[perm].to(dtype).to(device), idx[perm].to(index_dtype).to(device)


def run_both(tt, z, idx, state, block=None):
    ref = [t.clone() for t in state]
    out = [t.clone() for t in state]
    torch.ops.tdds.update(z, idx, *ref)
    if block is None:
        torch.ops.tdds.update_triton(z, idx, *out)
    else:
        tt.update(z, idx, *out, block=block)
    return ref, out


def assert_state(out, ref, atol=2e-6, rtol=2e-6):
    prev, seen, ring, counters = out
    torch.testing.assert_close(prev.float(), ref[0].float(), atol=atol, rtol=rtol, msg="prev")
    torch.testing.assert_close(seen, ref[1], atol=0, rtol=0, msg="seen")
    torch.testing.assert_close(ring, ref[2], equal_nan=True, **RING_TOL, msg="ring")
    torch.testing.assert_close(counters, ref[3], atol=0, rtol=0, msg="counters")


@pytest.mark.parametrize("epoch", [0, 1, 4])
@pytest.mark.parametrize("dtypes", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_update_matches_reference(device, shape, dtypes, epoch):
    tt = triton_ops(device)
    (c, block), (zdt, storage, atol, rtol) = shape, dtypes
    n, w1 = 24, 3
    state = make_state(n, c, w1, storage, epoch, device)
    z, idx = make_batch(n, c, zdt, device)
    ref, out = run_both(tt, z, idx, state, block)
    assert_state(out, ref, atol, rtol)
    assert out[3][_ops.NONFINITE] - state[3][_ops.NONFINITE] == 3
    assert out[3][_ops.OUT_OF_RANGE] - state[3][_ops.OUT_OF_RANGE] == 2


@pytest.mark.parametrize("device", DEVICES)
def test_int32_index_and_window_2(device):
    tt = triton_ops(device)
    state = make_state(16, 10, 1, torch.float32, 3, device)  # W = 2: one ring slot
    z, idx = make_batch(16, 10, torch.float32, device, b=8, index_dtype=torch.int32)
    assert_state(*run_both(tt, z, idx, state)[::-1])


@pytest.mark.parametrize("block", [None, 4])
@pytest.mark.parametrize("device", DEVICES)
def test_batch_duplicates_apply_exactly_one_row(device, block):
    # Three rows of sample 5 with different logits: the state must equal the reference with one
    # of them first (so applied), never a mix.
    tt = triton_ops(device)
    n, c = 8, 10
    state = make_state(n, c, 3, torch.float32, 2, device)
    state[1][5] = 1  # recorded last epoch: d is defined, so prev is read as well as written
    z = torch.randn(5, c, device=device) * 3
    idx = torch.tensor([5, 2, 5, 7, 5], device=device)
    out = [t.clone() for t in state]
    if block is None:
        torch.ops.tdds.update_triton(z, idx, *out)
    else:
        tt.update(z, idx, *out, block=block)
    mismatches = []
    for winner in (0, 2, 4):
        order = [winner] + [i for i in range(5) if i != winner]
        ref = [t.clone() for t in state]
        torch.ops.tdds.update(z[order], idx[order], *ref)
        try:
            assert_state(out, ref)
            return
        except AssertionError as e:
            mismatches.append(f"winner {winner}: {e}")
    pytest.fail("matches no single winner:\n" + "\n".join(mismatches))


@pytest.mark.parametrize("shape", [(10, None), (300, 128)], ids=["single", "chunked"])
@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits(device, shape):
    # Huge and tiny magnitudes (p underflows to 0: log(p + 1e-8) = log 1e-8), uniform rows, a
    # row that is all -inf or all NaN (skipped), fp16's largest values.
    tt = triton_ops(device)
    c, block = shape
    n = 8
    z = torch.randn(8, c) * 30
    z[1] = 0.0
    z[2] = torch.linspace(-1e4, 1e4, c)
    z[3] = -3e4
    z[4] = 65504.0
    z[4, 0] = -65504.0
    z[5] = float("-inf")
    z[6] = float("nan")
    for zdt in (torch.float32, torch.float16):
        state = make_state(n, c, 2, torch.float32, 1, device)
        state[1].fill_(0)  # all recorded last epoch
        idx = torch.arange(8, device=device)
        assert_state(*run_both(tt, z.to(zdt).to(device), idx, state, block)[::-1])


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_changes_nothing(device):
    triton_ops(device)
    state = make_state(4, 10, 2, torch.float32, 1, device)
    out = [t.clone() for t in state]
    torch.ops.tdds.update_triton(torch.empty(0, 10, device=device),
                                 torch.empty(0, dtype=torch.long, device=device), *out)
    for a, b in zip(out, state):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_tracker_trajectory_matches_reference(device, storage):
    # A whole run through the tracker: drifting logits, missing samples, duplicates (identical
    # rows, within and across batches), non-finite rows skipped; scores and state must agree.
    triton_ops(device)
    n, c, w, t = 20, 7, 3, 6
    kw = dict(num_samples=n, num_classes=c, window=w, decay=0.9, trajectory_len=t,
              device=device, storage_dtype=storage, on_nonfinite="skip")
    ref, tri = (tdds_kernels.TDDSTracker(backend=b, **kw) for b in ("reference", "triton"))
    base = torch.randn(n, c) * 3
    for _ in range(t):
        base += torch.randn(n, c)
        keep = torch.nonzero(torch.rand(n) > 0.15).squeeze(1)
        idx = torch.cat([keep, keep[torch.rand(keep.numel()) < 0.2]])
        idx = idx[torch.randperm(idx.numel())]
        z = base[idx].clone()
        z[torch.rand(idx.numel()) < 0.05, 0] = float("nan")
        for part in torch.split(torch.arange(idx.numel()), 6):
            for tr in (ref, tri):
                tr.update(z[part].to(device), idx[part].to(device))
        for tr in (ref, tri):
            tr.end_epoch()
    torch.testing.assert_close(tri.scores(), ref.scores(), atol=1e-5, rtol=1e-5)
    assert tri.stats == ref.stats
    sr, st = ref.state_dict(), tri.state_dict()
    torch.testing.assert_close(st["ring"], sr["ring"], equal_nan=True, **RING_TOL)
    torch.testing.assert_close(st["seen"], sr["seen"], atol=0, rtol=0)
