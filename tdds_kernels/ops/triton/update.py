"""tdds::update_triton: one program per position of the batch sorted by sample index.

Per row b with sample n = index[b], in epoch e = counters[EPOCH] (docs/design.md §3):
    p = softmax(z_b) in float32,  ℓ = log(p + ε)
    d = Σ_c |p_c · (ℓ_c − prev[n, c])|       (prev caches log(p_prev + ε), see ops/schema.py)
    ring[n, (e−1) mod (W−1)] = d if seen[n] was e−1 else NaN;  prev[n] = ℓ;  seen[n] = e
Of several usable (in-range, finite) rows of one sample in an epoch, exactly the first in batch
order is applied, whatever order the programs run in: the launcher sorts the B indices stably
on the device (torch.sort(stable=True): equal indices keep batch order, no host sync), and the
program at the first position of a run of equal indices handles the whole run, in order; the
programs inside a run exit at once. No program touches another's seen/prev/ring rows, so seen
needs no atomic claim; only the counters (integer sums: order-free) use atomic adds.
Traffic per applied row: the logits once (twice only when C exceeds one block: the second pass
re-reads a row that is still in L2), prev[n] read once and written once, a few scalars, plus
the sort (a few small kernels over the B indices; 32-bit keys, see sort_rows).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .. import checks
from .. import schema as _ops
from .runs import (
    add_counts,
    record,
    row_stats_chunk,
    run_next_prefetched,
    run_start,
    softmax_stats,
    stats_init,
    store_row_stats,
    target_of,
)

# Module constants used inside the kernel must be constexpr.
_EPS = tl.constexpr(_ops.EPS)

MAX_SINGLE_BLOCK = 8192  # rows up to this many classes stay in registers: one read of the logits
# Chunk of the two-pass online softmax for wider rows (C = 32000: 16 chunks), 8 warps. Chunks of
# 4096 with 16 warps spilled registers on sm_90 (ptxas -v, tests/core/test_compile.py).
CHUNK = 2048


@triton.jit
def _to_storage(x, ptr):
    """fp32 x rounded to nearest-even in ptr's dtype, as torch's .to() rounds."""
    if ptr.dtype.element_ty == tl.float32:
        return x
    elif ptr.dtype.element_ty == tl.bfloat16:
        # Rounded by hand: the interpreter truncates fp32 → bf16 (GPUs round; same bits here).
        # ℓ = log(p + ε) is finite, so no NaN/inf care is needed.
        b = x.to(tl.uint32, bitcast=True)
        b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
        return b.to(tl.float32, bitcast=True).to(tl.bfloat16)
    else:
        return x.to(ptr.dtype.element_ty)


@triton.jit
def _update_kernel(
    logits_ptr,
    logits_stride,
    sorted_ptr,
    order_ptr,
    prev_ptr,
    seen_ptr,
    ring_ptr,
    counters_ptr,
    targets_ptr,
    stats_ptr,
    B,
    N,
    C,
    W1,
    SINGLE: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_TARGETS: tl.constexpr,
):
    # sorted_ptr: the batch's indices sorted stably; order_ptr: their batch positions (int64).
    # targets_ptr / stats_ptr: None unless HAS_TARGETS (the plain update compiles without them).
    pos, n, head, epoch, slot, in_range, had_prev, fresh = run_start(sorted_ptr, seen_ptr, counters_ptr, N, W1)
    prev_row = prev_ptr + n * C  # int64: n·C passes 2^31 elements at e.g. N = 70k, C = 32k
    cols = tl.arange(0, BLOCK)
    n_dup = tl.zeros((), tl.int32)
    n_bad = tl.zeros((), tl.int32)
    n_oor = tl.zeros((), tl.int32)

    # The run's rows in batch order: the first usable one is applied if n is fresh, every other
    # usable one is a duplicate. Positions inside a run skip the loop (head is false).
    k = pos
    todo = head
    nxt = tl.load(sorted_ptr + k + 1, mask=head & (k + 1 < B), other=-1).to(tl.int64)  # one row ahead
    while todo:
        row = tl.load(order_ptr + k)
        z_row = logits_ptr + row * logits_stride
        # The previous row is needed only if this row is applied and n was recorded in e − 1;
        # whether it is applied depends on the logits (a non-finite row is skipped), but a
        # fresh n is the only case where it can be, so the load is issued now, under a mask
        # that does not wait for the logits and their reductions (a skipped row's q is unused).
        # Chunked rows: the first chunk now, each next one a chunk ahead in pass 2 (see there).
        q = tl.load(prev_row + cols, mask=tl.where(fresh & had_prev, cols < C, False), other=0.0).to(tl.float32)
        # Pass 1: m = max z, s = Σ exp(z − m), and the count of non-finite z (|z| < inf is false
        # for ±inf and NaN; no libdevice isfinite). Such a row is skipped; its values are zeroed
        # so that no inf − inf arithmetic happens. Padding lanes are −inf: exp gives 0. An
        # out-of-range row is only counted: its logits are not read.
        # Row masks gated by a per-row flag are written tl.where(flag, mask, False): the
        # interpreter (Triton 3.9) types `block & scalar` as int32, which tl.load then rejects.
        if SINGLE:
            mask = cols < C
            z = tl.load(z_row + cols, mask=tl.where(in_range, mask, False), other=0.0).to(tl.float32)
            ok = tl.abs(z) < float("inf")
            bad = tl.sum((mask & ~ok).to(tl.int32), 0)
            z = tl.where(ok, z, 0.0)
            zm = tl.where(mask, z, float("-inf"))
            m = tl.max(zm, 0)
            s = tl.sum(tl.exp(zm - m), 0)
        else:
            m, s, bad = softmax_stats(z_row, C, in_range, BLOCK)
        usable = in_range & (bad == 0)
        apply = usable & fresh
        has_d = apply & had_prev
        inv_s = 1.0 / s
        if HAS_TARGETS:
            # Every row of the run passes here once: each row_stats row is written by one program.
            y, want = target_of(targets_ptr, row, C, apply)
            first, zy, other, e2 = stats_init(C)

        # Pass 2 (applied row only): p, ℓ, d against prev[n] (read only when d is defined),
        # then prev[n] = ℓ; with targets, the row stats from the same values.
        d = tl.zeros((), tl.float32)
        if SINGLE:
            p = tl.exp(zm - m) * inv_s  # padding lanes: p = 0
            if HAS_TARGETS:
                first, zy, other, e2 = row_stats_chunk(zm, p, cols, mask, y, m, first, zy, other, e2)
            lp = tl.log(p + _EPS)
            d = tl.sum(tl.where(mask, tl.abs(p * (lp - q)), 0.0), 0)  # used only where has_d
            tl.store(prev_row + cols, _to_storage(lp, prev_ptr), mask=tl.where(apply, mask, False))
        else:
            for start in range(0, C, BLOCK):
                c = start + cols
                mask = c < C
                z = tl.load(z_row + c, mask=tl.where(apply, mask, False), other=0.0).to(tl.float32)
                z = tl.where((tl.abs(z) < float("inf")) & mask, z, float("-inf"))
                p = tl.exp(z - m) * inv_s  # padding lanes: p = 0; a skipped row's values: anything
                if HAS_TARGETS:
                    first, zy, other, e2 = row_stats_chunk(z, p, c, mask, y, m, first, zy, other, e2)
                lp = tl.log(p + _EPS)
                # This chunk's q was loaded one chunk ago (the first before pass 1): the next
                # chunk's load is issued now, before this chunk's exp/log use q, so its DRAM
                # latency overlaps them (the logits' chunks are L2 hits here: pass 1 read them).
                q_here = q
                q = tl.load(prev_row + BLOCK + c, mask=tl.where(has_d, BLOCK + c < C, False), other=0.0)
                q = q.to(tl.float32)
                d += tl.sum(tl.where(mask, tl.abs(p * (lp - q_here)), 0.0), 0)
                tl.store(prev_row + c, _to_storage(lp, prev_ptr), mask=tl.where(apply, mask, False))
        if HAS_TARGETS:
            store_row_stats(stats_ptr, row, want, y, m, inv_s, first, zy, other, e2)
        record(ring_ptr, seen_ptr, n, W1, slot, epoch, d, has_d, apply)
        fresh, n_dup, n_bad, n_oor, k, todo, nxt = run_next_prefetched(
            sorted_ptr, B, n, k, nxt, fresh, apply, usable, in_range, bad, n_dup, n_bad, n_oor
        )

    add_counts(counters_ptr, n_dup, n_bad, n_oor)


@triton.jit
def _sort_keys_kernel(index_ptr, keys_ptr, B, N, BLOCK: tl.constexpr):
    # keys[b] = index[b] where 0 <= index[b] < N, else N + b: int32 whenever N + B < 2^31.
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = b < B
    n = tl.load(index_ptr + b, mask=mask, other=0).to(tl.int64)
    key = tl.where((n >= 0) & (n < N), n, N + b)
    tl.store(keys_ptr + b, key.to(tl.int32), mask=mask)


KEYS_BLOCK = 1024


def sort_rows(index: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted keys, order): the batch sorted stably by sample, what the update kernels walk.

    A stable sort of 64-bit keys costs twice the radix passes of 32-bit ones (CUB above 4096
    rows), and it is a fixed cost per update whatever C is. So where N + B < 2^31 the keys are
    32-bit: the index itself where it lies in [0, N), and N + b for an out-of-range row b. In-range
    keys are the samples, in batch order among equals (stable), so the first-usable-row rule is
    unchanged; out-of-range rows stay out of range (skipped and counted) and each is a run of
    its own, so no program walks a run of them. One small kernel, then torch.sort; no host sync.
    Otherwise (or without num_samples) the index itself is sorted.
    """
    batch = index.shape[0]
    if num_samples is None or num_samples + batch >= 2**31:
        return torch.sort(index, stable=True)
    keys = torch.empty(batch, dtype=torch.int32, device=index.device)
    with device_of(index):
        _sort_keys_kernel[(triton.cdiv(batch, KEYS_BLOCK),)](index, keys, batch, num_samples, BLOCK=KEYS_BLOCK)
    return torch.sort(keys, stable=True)


def device_of(t: torch.Tensor):
    """Launch on the tensor's GPU: Triton launches on the current device."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _config(num_classes: int, block: int | None = None) -> tuple[int, bool, int]:
    """(BLOCK, SINGLE, num_warps) for a row of C classes; `block` forces a chunk (tests)."""
    if block is None:
        block = triton.next_power_of_2(num_classes)
        if block > MAX_SINGLE_BLOCK:
            block = CHUNK
    single = block >= num_classes
    # A warp per 256 lanes (8 values a thread), 1 to 16 warps: no ptxas spills on sm_90 for one
    # block up to 8192 classes or chunks of CHUNK (tests/core/test_compile.py checks each variant).
    num_warps = max(1, min(16, block // 256))
    return block, single, num_warps


def check_targets(op: str, logits: torch.Tensor, targets, row_stats) -> None:
    """targets (B,) int64/int32 and row_stats (B, 4) float32, both or neither, on the logits'
    device (ops/schema.py); the checks read metadata only (no host sync)."""
    if (targets is None) != (row_stats is None):
        raise ValueError(f"{op}: targets and row_stats must be given together")
    if targets is None:
        return
    batch = logits.shape[0]
    for name, t, shape, dtypes in (
        ("targets", targets, (batch,), (torch.int64, torch.int32)),
        ("row_stats", row_stats, (batch, len(_ops.ROW_STATS)), (torch.float32,)),
    ):
        if tuple(t.shape) != shape or t.dtype not in dtypes or not t.is_contiguous():
            want = "/".join(str(d).removeprefix("torch.") for d in dtypes)
            raise ValueError(f"{op}: {name} must be a contiguous {shape} {want} tensor, got {tuple(t.shape)} {t.dtype}")
        if t.device != logits.device:
            raise ValueError(f"{op}: {name} must be on {logits.device}, got {t.device}")


def prepare(logits: torch.Tensor, index: torch.Tensor, block: int | None, num_samples: int | None = None):
    """The launchers' common start: (logits with unit class stride, sorted keys, order, _config).

    The sort is stable: equal indices keep batch order, so the head of each run is its first
    row. On the device, with no host sync. With num_samples, 32-bit keys (sort_rows).
    """
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    sorted_index, order = sort_rows(index, num_samples)
    return logits, sorted_index, order, _config(logits.shape[1], block)


def update(
    logits: torch.Tensor,
    index: torch.Tensor,
    prev: torch.Tensor,
    seen: torch.Tensor,
    ring: torch.Tensor,
    counters: torch.Tensor,
    targets: torch.Tensor | None = None,
    row_stats: torch.Tensor | None = None,
    *,
    block: int | None = None,
) -> None:
    """Launcher for UPDATE_SCHEMA (tdds_kernels/ops/schema.py)."""
    checks.update("update_triton", logits, index, prev, seen, ring, counters, targets, row_stats)
    batch, num_classes = logits.shape
    if batch == 0:
        return
    logits, sorted_index, order, (block, single, num_warps) = prepare(logits, index, block, prev.shape[0])
    with device_of(logits):
        _update_kernel[(batch,)](
            logits,
            logits.stride(0),
            sorted_index,
            order,
            prev,
            seen,
            ring,
            counters,
            targets,
            row_stats,
            batch,
            prev.shape[0],
            num_classes,
            ring.shape[1],
            SINGLE=single,
            BLOCK=block,
            HAS_TARGETS=targets is not None,
            num_warps=num_warps,
        )
