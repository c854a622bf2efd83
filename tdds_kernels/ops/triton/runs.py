"""Jit helpers shared by the update kernels (update.py, update_topk.py): the run bookkeeping.

Both kernels run one program per position of the stably sorted batch; the program at the head of
a run of equal indices walks the run in batch order and applies the first usable row. These
helpers hold the parts that are the same in both: the run head and the sample's epoch state,
the streamed softmax statistics, the ring/seen record, the step to the next position with the
per-run counts, the counters' masked atomic adds, and (with targets) the baselines' row stats.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import schema as _ops

# Module constants used inside the kernel must be constexpr.
_DUPLICATES = tl.constexpr(_ops.DUPLICATES)
_NONFINITE = tl.constexpr(_ops.NONFINITE)
_OUT_OF_RANGE = tl.constexpr(_ops.OUT_OF_RANGE)
_EPOCH = tl.constexpr(_ops.EPOCH)
_NUM_STATS = tl.constexpr(len(_ops.ROW_STATS))
_CORRECT = tl.constexpr(_ops.CORRECT)
_EL2N = tl.constexpr(_ops.EL2N)
_MARGIN = tl.constexpr(_ops.MARGIN)
_TARGET_PROB = tl.constexpr(_ops.TARGET_PROB)


@triton.jit
def run_start(sorted_ptr, seen_ptr, counters_ptr, N, W1):
    """(pos, n, head, epoch, slot, in_range, had_prev, fresh) for this program's position."""
    pos = tl.program_id(0).to(tl.int64)
    n = tl.load(sorted_ptr + pos).to(tl.int64)
    before = tl.load(sorted_ptr + tl.maximum(pos - 1, 0)).to(tl.int64)
    head = (pos == 0) | (before != n)  # first position of a run of equal indices
    # The epoch lives on the device (no host sync, no recompiles): a runtime value, not a flag.
    epoch = tl.load(counters_ptr + _EPOCH).to(tl.int32)
    slot = ((epoch - 1) % W1 + W1) % W1  # (e − 1) mod (W − 1), non-negative for any epoch; e = 0: slot W − 2
    in_range = (n >= 0) & (n < N)
    old = tl.load(seen_ptr + n, mask=in_range & head, other=0)
    # d_{e−1} needs a record in epoch e − 1; `fresh`: no row of n applied yet this epoch.
    had_prev = (old == epoch - 1) & (epoch >= 1)
    fresh = in_range & head & (old != epoch)
    return pos, n, head, epoch, slot, in_range, had_prev, fresh


@triton.jit
def softmax_stats(z_row, C, in_range, BLOCK: tl.constexpr):
    """(m, s, bad): max z, Σ exp(z − m) (online over BLOCK chunks) and the non-finite count.

    |z| < inf is false for ±inf and NaN (no libdevice isfinite). Non-finite values are zeroed so
    that no inf − inf arithmetic happens (the row is skipped anyway); padding lanes are −inf, so
    exp gives 0. An out-of-range row is only counted: its logits are not read. Row masks gated
    by a per-row flag are written tl.where(flag, mask, False): the interpreter (Triton 3.9)
    types `block & scalar` as int32, which tl.load then rejects.
    """
    cols = tl.arange(0, BLOCK)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    bad = tl.zeros((), tl.int32)
    for start in range(0, C, BLOCK):
        c = start + cols
        mask = c < C
        z = tl.load(z_row + c, mask=tl.where(in_range, mask, False), other=0.0).to(tl.float32)
        ok = tl.abs(z) < float("inf")
        bad += tl.sum((mask & ~ok).to(tl.int32), 0)
        z = tl.where(ok, z, 0.0)
        zm = tl.where(mask, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(zm, 0))  # online softmax: rescale s to the new max
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(zm - m_new), 0)
        m = m_new
    return m, s, bad


@triton.jit
def record(ring_ptr, seen_ptr, n, W1, slot, epoch, d, has_d, apply):
    """ring[n, slot] = d (NaN without a previous record) and seen[n] = epoch, for an applied row."""
    tl.store(ring_ptr + n * W1 + slot, tl.where(has_d, d, float("nan")), mask=apply)
    tl.store(seen_ptr + n, epoch, mask=apply)


@triton.jit
def run_next(sorted_ptr, B, n, k, fresh, apply, usable, in_range, bad, n_dup, n_bad, n_oor):
    """Counts this row, steps to the next position: (fresh, n_dup, n_bad, n_oor, k, todo)."""
    fresh = fresh & ~apply
    n_dup += (usable & ~apply).to(tl.int32)
    n_bad += (in_range & (bad > 0)).to(tl.int32)
    n_oor += (~in_range).to(tl.int32)
    k += 1
    todo = k < B
    if todo:
        todo = tl.load(sorted_ptr + k).to(tl.int64) == n
    return fresh, n_dup, n_bad, n_oor, k, todo


@triton.jit
def run_next_prefetched(sorted_ptr, B, n, k, nxt, fresh, apply, usable, in_range, bad, n_dup, n_bad, n_oor):
    """run_next with the key at k + 1 loaded one row ahead (`nxt`, loaded by the caller before
    the first row): the test for the run's next row no longer waits on a load issued after the
    row's work. Returns (fresh, n_dup, n_bad, n_oor, k, todo, nxt)."""
    fresh = fresh & ~apply
    n_dup += (usable & ~apply).to(tl.int32)
    n_bad += (in_range & (bad > 0)).to(tl.int32)
    n_oor += (~in_range).to(tl.int32)
    k += 1
    todo = (k < B) & (nxt == n)
    nxt = tl.load(sorted_ptr + k + 1, mask=todo & (k + 1 < B), other=-1).to(tl.int64)
    return fresh, n_dup, n_bad, n_oor, k, todo, nxt


@triton.jit
def add_counts(counters_ptr, n_dup, n_bad, n_oor):
    """Counters: one masked atomic add per kind, only where this run had such rows.

    Relaxed: these are integer sums that nothing reads inside this launch (the tracker reads
    them after it, and a launch boundary orders that), so the default acquire-release order,
    which fences before the program's later loads, buys nothing."""
    tl.atomic_add(counters_ptr + _DUPLICATES, n_dup.to(tl.int64), mask=n_dup > 0, sem="relaxed")
    tl.atomic_add(counters_ptr + _NONFINITE, n_bad.to(tl.int64), mask=n_bad > 0, sem="relaxed")
    tl.atomic_add(counters_ptr + _OUT_OF_RANGE, n_oor.to(tl.int64), mask=n_oor > 0, sem="relaxed")


@triton.jit
def target_of(targets_ptr, row, C, apply):
    """(y, want): the row's target as int32 (−1 when outside [0, C)) and whether its row stats
    are written (the row is applied and 0 <= y < C). The range test is made on the stored
    dtype: an int64 target such as 2^32 must not wrap into [0, C)."""
    y = tl.load(targets_ptr + row).to(tl.int64)
    want = apply & (y >= 0) & (y < C)
    return tl.where(want, y, -1).to(tl.int32), want


@triton.jit
def stats_init(C):
    """Accumulators of row_stats_chunk: (first argmax, z_y, max_{c≠y} z, Σ_{c≠y} p_c²)."""
    return (
        tl.full((), 0, tl.int32) + C,
        tl.zeros((), tl.float32),
        tl.full((), float("-inf"), tl.float32),
        tl.zeros((), tl.float32),
    )


@triton.jit
def row_stats_chunk(z, p, c, mask, y, m, first, zy, other, e2):
    """Folds the classes c of a row (z float32 logits, −inf past C; p = softmax(z)[c]) into the
    accumulators. The argmax is the lowest class whose z equals the row max m (ties: the lowest
    index, as torch.argmax), exact because m is the max of these very values. The squared error
    is accumulated over c ≠ y and (1 − p_y)² added at the end: Σ p² − 2 p_y + 1 would cancel
    when p_y ≈ 1."""
    not_y = mask & (c != y)
    first = tl.min(tl.where(mask & (z == m), c, first), 0)
    zy += tl.sum(tl.where(mask & (c == y), z, 0.0), 0)
    other = tl.maximum(other, tl.max(tl.where(not_y, z, float("-inf")), 0))
    e2 += tl.sum(tl.where(not_y, p * p, 0.0), 0)
    return first, zy, other, e2


@triton.jit
def store_row_stats(stats_ptr, row, want, y, m, inv_s, first, zy, other, e2):
    """row_stats[row] (ops/schema.py ROW_STATS) from the accumulators; NaN unless `want`.
    p_y is computed as every p_c of the row is (exp(z − m) / s), so it is the p_y left out of
    e2. The margin is +inf when C = 1 (no other class: max is −inf)."""
    p_y = tl.exp(zy - m) * inv_s
    out = stats_ptr + row * _NUM_STATS
    tl.store(out + _CORRECT, tl.where(want, (first == y).to(tl.float32), float("nan")))
    tl.store(out + _EL2N, tl.where(want, tl.sqrt(e2 + (1.0 - p_y) * (1.0 - p_y)), float("nan")))
    tl.store(out + _MARGIN, tl.where(want, zy - other, float("nan")))
    tl.store(out + _TARGET_PROB, tl.where(want, p_y, float("nan")))
