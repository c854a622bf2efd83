"""tdds::update_topk_triton: the update with a compressed previous row (docs/design.md §2.1).

The program layout and the first-usable-row rule are update.py's (one program per position of
the stably sorted batch; the head of a run of equal indices handles the run in batch order).
Per applied row b of sample n, with p = softmax(z_b), ℓ = log(p + ε):

    d = Σ_{c ∉ i} |p_c (ℓ_c − r)|  +  Σ_j |p_{i_j} (ℓ_{i_j} − v_j)|

with (v, i, r) = (prev_val[n], prev_idx[n], prev_rest[n]): the stored classes' z gathered, the
others streamed with a per-chunk histogram of the ids as the mask, so no (C,) row of log q is
built and no stored class's term is added and then removed. Then the
K largest p, ties to the lower class id, by K passes of "the best element worse than the last
one taken" (no mask to keep: the order p desc, id asc is total), and the residual mass summed
over the elements worse than the K-th (not 1 − the kept mass: cancellation). Rows of any width:
each pass streams the row in BLOCK chunks (one chunk up to update.MAX_SINGLE_BLOCK classes).
O(K·C) per row: meant for small K; the selection dominates at K = 128.
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
def _worse(p, c, mask, last_p, last_c):
    """The classes after (last_p, last_c) in the order p desc, class id asc."""
    return mask & ((p < last_p) | ((p == last_p) & (c > last_c)))


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
        # classes against their stored logs (their z gathered), every other class against the
        # residual log. Which classes are stored is a per-chunk histogram of the ids falling in
        # it, so no large term is added for a stored class and then taken out again (that
        # cancellation cost ~1e-6 absolute on d: 1e-3 relative for a settled sample).
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
            for start in range(0, C, BLOCK):
                c = start + cols
                mask, p = _probs(z_row, c, C, m, inv_s)
                rel = ids - start
                stored = tl.histogram(rel, BLOCK, mask=ok & (rel >= 0) & (rel < BLOCK)) > 0
                d += tl.sum(tl.where(mask & ~stored, tl.abs(p * (tl.log(p + _EPS) - r)), 0.0), 0)

        # Top K: pass j takes the best element worse than (last_p, last_c), in the order
        # p desc, class id asc; then the residual mass over everything worse than the K-th.
        if apply:
            last_p = tl.full((), float("inf"), tl.float32)
            last_c = tl.full((), -1, tl.int64)
            for j in range(0, K):
                best_p = tl.full((), -1.0, tl.float32)
                best_c = tl.full((), C, tl.int64)
                for start in range(0, C, BLOCK):
                    c = start + cols
                    mask, p = _probs(z_row, c, C, m, inv_s)
                    worse = _worse(p, c, mask, last_p, last_c)
                    pm = tl.where(worse, p, -1.0)
                    chunk_p = tl.max(pm, 0)
                    chunk_c = tl.min(tl.where(worse & (pm == chunk_p), c, C), 0).to(tl.int64)
                    take = (chunk_p > best_p) | ((chunk_p == best_p) & (chunk_c < best_c))
                    best_c = tl.where(take, chunk_c, best_c)
                    best_p = tl.where(take, chunk_p, best_p)
                tl.store(val_ptr + n * K + j, _to_storage(tl.log(best_p + _EPS), val_ptr))
                tl.store(idx_ptr + n * K + j, best_c.to(idx_ptr.dtype.element_ty))
                last_p = best_p
                last_c = best_c
            # With targets, the row stats ride on this last pass.
            residual = tl.zeros((), tl.float32)
            for start in range(0, C, BLOCK):
                c = start + cols
                mask, z = _logits(z_row, c, C)
                p = tl.exp(z - m) * inv_s
                worse = _worse(p, c, mask, last_p, last_c)
                residual += tl.sum(tl.where(worse, p, 0.0), 0)
                if HAS_TARGETS:
                    first, zy, other, e2 = row_stats_chunk(z, p, c, mask, y, m, first, zy, other, e2)
            mean = tl.where(K < C, residual / tl.maximum(C - K, 1).to(tl.float32), 0.0)
            tl.store(rest_ptr + n, _to_storage(tl.log(mean + _EPS), rest_ptr))
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
