"""tdds::update_topk_triton: the update with a compressed previous row (docs/design.md §2.1).

The program layout and the first-usable-row rule are update.py's (one program per position of
the stably sorted batch; the head of a run of equal indices handles the run in batch order).
Per applied row b of sample n, with p = softmax(z_b), ℓ = log(p + ε):

    d = Σ_j |p_{i_j} (ℓ_{i_j} − v_j)|  +  m |log(m / (C − K) + ε) − r|     (the tail: K < C only)
    m = Σ_{c ∉ i} p_c

with (v, i, r) = (prev_val[n], prev_idx[n], prev_rest[n]): the stored classes' z gathered, the
others streamed with a per-chunk histogram of the ids as the mask. The old tail is taken to have
the new row's shape at its stored mean (reference_topk.py), so the tail classes cost their p
only, no log each, and m is summed over the classes it holds (not 1 − the stored mass, which
loses a settled sample's small tail to cancellation); no (C,) row of log q is built. Then the
K largest p, ties to the lower class id, without K passes: the K-th largest key (the bits of p,
which order non-negative floats as their values) by a radix select, four passes of 8-bit
digits counted with tl.histogram whatever K is; then one pass that keeps every class above that
key and, of the classes at it, the lowest ids (a running count in class order), writes their ids
compacted in class order and sums the p of the others (the residual: no 1 − kept cancellation);
then the K kept entries are sorted in registers by (p desc, id asc). Rows of any width: each
pass streams the row in BLOCK chunks (one chunk up to update.MAX_SINGLE_BLOCK classes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import checks
from .. import schema as _ops
from .runs import (
    add_counts,
    record,
    row_stats_chunk,
    run_next,
    run_start,
    softmax_stats,
    stats_init,
    store_row_stats,
    target_of,
)
from .update import _to_storage, device_of, prepare

_EPS = tl.constexpr(_ops.EPS)


@triton.jit
def _logits(z_row, c, C):
    """(mask, z) for the classes c of an applied row: z in float32, −inf past C."""
    mask = c < C
    z = tl.load(z_row + c, mask=mask, other=0.0).to(tl.float32)
    return mask, tl.where(mask, z, float("-inf"))


@triton.jit
def _probs(z_row, c, C, m, inv_s):
    """(mask, p) for the classes c of an applied row: p = softmax(z)[c], 0 past C."""
    mask, z = _logits(z_row, c, C)
    return mask, tl.exp(z - m) * inv_s


@triton.jit
def _radix_pass(z_row, C, m, inv_s, prefix, need, SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    """One digit (bits SHIFT..SHIFT+7) of the K-th largest key: of the classes whose higher
    bits equal prefix's, a histogram of this digit; the digit is the lowest d with fewer than
    `need` of them above it. Returns (prefix with the digit set, need − the count above it)."""
    cols = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    hist = tl.zeros((256,), tl.int32)
    for start in range(0, C, BLOCK):
        c = start + cols
        mask, p = _probs(z_row, c, C, m, inv_s)
        key = p.to(tl.int32, bitcast=True)
        if SHIFT < 24:
            mask = mask & ((key >> (SHIFT + 8)) == (prefix >> (SHIFT + 8)))
        hist += tl.histogram((key >> SHIFT) & 255, 256, mask=mask)
    above = tl.sum(hist, 0) - tl.cumsum(hist, 0)  # classes with a larger digit
    digit = tl.min(tl.where(above < need, bins, 256), 0)
    need = need - tl.sum(tl.where(bins == digit, above, 0), 0)
    return prefix | (digit << SHIFT), need


@triton.jit
def _update_topk_kernel(
    logits_ptr,
    logits_stride,
    sorted_ptr,
    order_ptr,
    val_ptr,
    idx_ptr,
    rest_ptr,
    seen_ptr,
    ring_ptr,
    counters_ptr,
    targets_ptr,
    stats_ptr,
    B,
    N,
    C,
    K,
    W1,
    BLOCK: tl.constexpr,
    KBLOCK: tl.constexpr,
    HAS_TARGETS: tl.constexpr,
):
    pos, n, head, epoch, slot, in_range, had_prev, fresh = run_start(sorted_ptr, seen_ptr, counters_ptr, N, W1)
    cols = tl.arange(0, BLOCK)
    kcols = tl.arange(0, KBLOCK)
    kmask = kcols < K
    n_dup = tl.zeros((), tl.int32)
    n_bad = tl.zeros((), tl.int32)
    n_oor = tl.zeros((), tl.int32)

    k = pos
    todo = head
    while todo:
        row = tl.load(order_ptr + k)
        z_row = logits_ptr + row * logits_stride
        m, s, bad = softmax_stats(z_row, C, in_range, BLOCK)  # pass 1, as in update.py
        usable = in_range & (bad == 0)
        apply = usable & fresh
        has_d = apply & had_prev
        inv_s = 1.0 / s
        if HAS_TARGETS:  # every row of the run passes here once, as in update.py
            y, want = target_of(targets_ptr, row, C, apply)
            first, zy, other, e2 = stats_init(C)

        # d against the old compressed row (read before it is overwritten below): the K stored
        # classes against their stored logs (their z gathered), then the tail's one term from its
        # mass (`tail`; `m` here is the row's max logit). The mass is summed over the classes
        # outside the stored ids (a per-chunk histogram of the ids falling in the chunk is the
        # mask), not taken as 1 − the stored mass: for a settled sample that difference would
        # lose the small tail to cancellation. No log per tail class: one for the whole tail.
        d = tl.zeros((), tl.float32)
        if has_d:
            r = tl.load(rest_ptr + n).to(tl.float32)
            ids = tl.load(idx_ptr + n * K + kcols, mask=kmask, other=0).to(tl.int32)
            v = tl.load(val_ptr + n * K + kcols, mask=kmask, other=0.0).to(tl.float32)
            ok = kmask & (ids >= 0) & (ids < C)  # ids come from this op; guard anyway
            ids = tl.where(ok, ids, 0)
            zk = tl.load(z_row + ids, mask=ok, other=float("-inf")).to(tl.float32)
            pk = tl.exp(zk - m) * inv_s
            d += tl.sum(tl.where(ok, tl.abs(pk * (tl.log(pk + _EPS) - v)), 0.0), 0)
            if K < C:  # at K = C the tail is empty: no term
                tail = tl.zeros((), tl.float32)
                for start in range(0, C, BLOCK):
                    c = start + cols
                    mask, p = _probs(z_row, c, C, m, inv_s)
                    rel = ids - start
                    stored = tl.histogram(rel, BLOCK, mask=ok & (rel >= 0) & (rel < BLOCK)) > 0
                    tail += tl.sum(tl.where(mask & ~stored, p, 0.0), 0)
                step = tl.log(tail / (C - K).to(tl.float32) + _EPS) - r
                d += tail * tl.abs(step)

        # Top K: the key of the K-th best class and how many of the classes at that key are kept
        # (need >= 1), in four passes whatever K; then one pass keeps the classes above it and
        # the `need` lowest ids at it, writes their ids in class order and sums the rest's p.
        if apply:
            key_k = tl.zeros((), tl.int32)
            need = tl.zeros((), tl.int32) + K
            key_k, need = _radix_pass(z_row, C, m, inv_s, key_k, need, 24, BLOCK)
            key_k, need = _radix_pass(z_row, C, m, inv_s, key_k, need, 16, BLOCK)
            key_k, need = _radix_pass(z_row, C, m, inv_s, key_k, need, 8, BLOCK)
            key_k, need = _radix_pass(z_row, C, m, inv_s, key_k, need, 0, BLOCK)
            tl.debug_barrier()  # every lane has read the old ids (d above) before they are replaced
            slots = tl.zeros((), tl.int32)
            ties = tl.zeros((), tl.int32)
            residual = tl.zeros((), tl.float32)
            for start in range(0, C, BLOCK):  # with targets, the row stats ride on this pass
                c = start + cols
                mask, z = _logits(z_row, c, C)
                p = tl.exp(z - m) * inv_s
                key = p.to(tl.int32, bitcast=True)
                at = (mask & (key == key_k)).to(tl.int32)
                keep = (mask & (key > key_k)) | ((at != 0) & (ties + tl.cumsum(at, 0) <= need))
                # its own name: `pos` is this program's position, int64 in some specialisations
                kept_at = slots + tl.cumsum(keep.to(tl.int32), 0) - 1
                tl.store(idx_ptr + n * K + kept_at, c.to(idx_ptr.dtype.element_ty), mask=keep)
                residual += tl.sum(tl.where(mask & ~keep, p, 0.0), 0)
                ties += tl.sum(at, 0)
                slots += tl.sum(keep.to(tl.int32), 0)
                if HAS_TARGETS:
                    first, zy, other, e2 = row_stats_chunk(z, p, c, mask, y, m, first, zy, other, e2)
            mean = tl.where(K < C, residual / tl.maximum(C - K, 1).to(tl.float32), 0.0)
            tl.store(rest_ptr + n, _to_storage(tl.log(mean + _EPS), rest_ptr))
            # The K kept, sorted by (p desc, id asc): one int64 key each, p's bits inverted above
            # the id (their z gathered again: the same p as in the passes).
            tl.debug_barrier()
            ids = tl.load(idx_ptr + n * K + kcols, mask=kmask, other=0).to(tl.int32)
            pk = tl.exp(tl.load(z_row + ids, mask=kmask, other=float("-inf")).to(tl.float32) - m) * inv_s
            order = ((0x7FFFFFFF - pk.to(tl.int32, bitcast=True)).to(tl.int64) << 32) | ids.to(tl.int64)
            order = tl.sort(tl.where(kmask, order, 0x7FFFFFFFFFFFFFFF), 0)
            ids = (order & 0xFFFFFFFF).to(tl.int32)
            pk = (0x7FFFFFFF - (order >> 32)).to(tl.int32).to(tl.float32, bitcast=True)
            tl.store(val_ptr + n * K + kcols, _to_storage(tl.log(pk + _EPS), val_ptr), mask=kmask)
            tl.store(idx_ptr + n * K + kcols, ids.to(idx_ptr.dtype.element_ty), mask=kmask)
        if HAS_TARGETS:
            store_row_stats(stats_ptr, row, want, y, m, inv_s, first, zy, other, e2)
        record(ring_ptr, seen_ptr, n, W1, slot, epoch, d, has_d, apply)
        fresh, n_dup, n_bad, n_oor, k, todo = run_next(
            sorted_ptr, B, n, k, fresh, apply, usable, in_range, bad, n_dup, n_bad, n_oor
        )

    add_counts(counters_ptr, n_dup, n_bad, n_oor)


def update_topk(
    logits: torch.Tensor,
    index: torch.Tensor,
    prev_val: torch.Tensor,
    prev_idx: torch.Tensor,
    prev_rest: torch.Tensor,
    seen: torch.Tensor,
    ring: torch.Tensor,
    counters: torch.Tensor,
    targets: torch.Tensor | None = None,
    row_stats: torch.Tensor | None = None,
    *,
    block: int | None = None,
) -> None:
    """Launcher for UPDATE_TOPK_SCHEMA (tdds_kernels/ops/schema.py)."""
    checks.update_topk(
        "update_topk_triton", logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters, targets, row_stats
    )
    batch, num_classes = logits.shape
    if batch == 0:
        return
    logits, sorted_index, order, (block, _, num_warps) = prepare(logits, index, block)
    k = prev_val.shape[1]
    with device_of(logits):
        _update_topk_kernel[(batch,)](
            logits,
            logits.stride(0),
            sorted_index,
            order,
            prev_val,
            prev_idx,
            prev_rest,
            seen,
            ring,
            counters,
            targets,
            row_stats,
            batch,
            prev_val.shape[0],
            num_classes,
            k,
            ring.shape[1],
            BLOCK=block,
            KBLOCK=triton.next_power_of_2(k),
            HAS_TARGETS=targets is not None,
            num_warps=num_warps,
        )
