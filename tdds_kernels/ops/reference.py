"""Pure-PyTorch statement of the TDDS formula: the reference every backend is checked against.

Vectorized over rows and samples (no Python loop over either); runs on any device.

    p_t = softmax(z_t)                                  float32 whatever the logits' dtype
    d_t = Σ_c | p_{t+1,c} · (log(p_{t+1,c} + ε) − log(p_{t,c} + ε)) |      ε = 1e-8
    R_k = sqrt(Σ_j (d_j − m_k)²)  over the defined d_k..d_{k+W−2},  m_k their mean
    S   ← (1 − β)·S + β·R_k       once per window, in order

and, with targets y, the per-row quantities of the training-dynamics baselines (row_statistics;
tdds_kernels/core/baselines.py folds them per sample): correct = [argmax z == y], EL2N
||p − onehot(y)||₂, the margin z_y − max_{c≠y} z_c and p_y.
"""

from __future__ import annotations

import torch

from . import checks, schema
from .schema import DUPLICATES, EPOCH, EPS, MISSING, NONFINITE, OUT_OF_RANGE, ROW_STATS

schema.define_sibling("")


def first_occurrences(keys: torch.Tensor) -> torch.Tensor:
    """Positions in `keys` of the first occurrence of each distinct key (batch order)."""
    if keys.numel() == 0:
        return keys.new_empty(0, dtype=torch.long)
    sorted_keys, order = torch.sort(keys, stable=True)
    head = torch.ones_like(sorted_keys, dtype=torch.bool)
    head[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return order[head]


def contribution(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """d = Σ_c |p_c · (log(p_c+ε) − log(q_c+ε))|, given the two logs (float32, per row)."""
    return (p * (log_p - log_q)).abs().sum(dim=1)


def applied_rows(logits, index, n_samples, seen, counters):
    """The rows of a batch that update() applies, with their samples and the epoch; counts the
    rest (duplicates, non-finite, out of range) into `counters`. Shared by every reference update.

    Of the usable rows (index in range, logits finite) of a sample, the first in batch order is
    applied if the sample was not recorded earlier in the epoch; every other usable row is a
    duplicate. Returns (x (R, C) float32 logits of the applied rows, n (R,) their samples, epoch,
    rows (R,) their batch positions)."""
    epoch = counters[EPOCH].to(torch.int32)  # 0-d, on the state's device
    idx = index.to(torch.long)
    in_range = (idx >= 0) & (idx < n_samples)
    x = logits.to(torch.float32)
    finite = torch.isfinite(x).all(dim=1)
    usable = in_range & finite
    safe = torch.where(in_range, idx, torch.zeros_like(idx))
    # A row whose sample was already recorded this epoch is a duplicate; within the batch the
    # first usable occurrence of each sample wins, so two rows never mix.
    fresh = usable & (seen.index_select(0, safe) != epoch)
    rows = torch.nonzero(fresh).squeeze(1)
    rows = rows[first_occurrences(idx[rows])]
    counters[DUPLICATES] += usable.sum() - rows.numel()
    counters[NONFINITE] += (in_range & ~finite).sum()
    counters[OUT_OF_RANGE] += (~in_range).sum()
    return x.index_select(0, rows), idx.index_select(0, rows), epoch, rows


def row_statistics(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(R, 4) float32 ROW_STATS of logits rows x (R, C) float32 with targets y (R,) int64 in
    [0, C): correct, EL2N, margin, target probability (ops/schema.py)."""
    p = torch.softmax(x, dim=1)
    cols = y[:, None]
    correct = (x.argmax(dim=1) == y).to(torch.float32)  # argmax: the lowest index among ties
    err = p.scatter_add(1, cols, torch.full_like(p[:, :1], -1.0))
    others = x.scatter(1, cols, float("-inf"))
    margin = x.gather(1, cols).squeeze(1) - others.max(dim=1).values
    return torch.stack((correct, err.norm(dim=1), margin, p.gather(1, cols).squeeze(1)), dim=1)


def write_row_stats(x, y_all, rows, row_stats) -> None:
    """row_stats (B, 4): row_statistics of the applied rows `rows` (logits x) whose target is in
    [0, C), NaN everywhere else. Shared by every reference update."""
    assert row_stats.shape[1] == len(ROW_STATS)
    y = y_all.to(torch.long).index_select(0, rows)
    ok = (y >= 0) & (y < x.shape[1])
    stats = row_statistics(x, torch.where(ok, y, torch.zeros_like(y)))
    row_stats.fill_(float("nan"))
    row_stats.index_copy_(0, rows, torch.where(ok[:, None], stats, torch.full_like(stats, float("nan"))))


def record(d, n, epoch, seen, ring) -> None:
    """Write d_{e-1} of samples n into the ring (NaN where undefined) and mark them seen in e.

    d_{e-1} is defined only if the sample was recorded in epoch e-1 (never at e = 0). At e = 0
    the slot written, (−1) mod (W−1), gets NaN; it is overwritten before any window reads it."""
    had_prev = (seen.index_select(0, n) == epoch - 1) & (epoch >= 1)
    w1 = ring.shape[1]
    slot = torch.remainder(epoch.long() - 1, w1)
    ring.view(-1).index_copy_(0, n * w1 + slot, torch.where(had_prev, d, torch.full_like(d, float("nan"))))
    seen.index_fill_(0, n, epoch)


def update(logits, index, prev, seen, ring, counters, targets=None, row_stats=None) -> None:
    """Record one batch of epoch e = counters[EPOCH] (docs/design.md §3); with targets, write
    row_stats (ops/schema.py).

    Every backend must apply the same rows as applied_rows(), whatever its execution order.
    Syncs the host on CUDA: picking the applied rows (nonzero, boolean indexing) gives tensors
    whose shape depends on the data. The triton and cuda backends do not sync."""
    checks.update("update", logits, index, prev, seen, ring, counters, targets, row_stats)
    x, n, epoch, rows = applied_rows(logits, index, prev.shape[0], seen, counters)
    if targets is not None:
        write_row_stats(x, targets, rows, row_stats)
    p = torch.softmax(x, dim=1)
    log_p = torch.log(p + EPS)
    d = contribution(p, log_p, prev.index_select(0, n).to(torch.float32))
    record(d, n, epoch, seen, ring)
    prev.index_copy_(0, n, log_p.to(prev.dtype))


def window_deviation(ring: torch.Tensor) -> torch.Tensor:
    """R per sample: L2 norm of the defined d's deviations from their mean; 0 if < 2 defined."""
    defined = ~torch.isnan(ring)
    count = defined.sum(dim=1)
    values = torch.where(defined, ring, torch.zeros_like(ring))
    mean = values.sum(dim=1) / count.clamp(min=1)
    dev = torch.where(defined, ring - mean[:, None], torch.zeros_like(ring))
    r = dev.square().sum(dim=1).sqrt()
    return torch.where(count >= 2, r, torch.zeros_like(r))


def epoch_step(seen, ring, score, counters, decay: float) -> None:
    """Close epoch e = counters[EPOCH]: mark missing samples, fold window k = e−W+1 into S once
    e ≥ W−1, then advance counters[EPOCH]; no host sync."""
    checks.epoch_step("epoch_step", seen, ring, score, counters)
    epoch = counters[EPOCH].to(torch.int32)
    missing = seen != epoch
    counters[MISSING] += missing.sum()
    w1 = ring.shape[1]
    slot = torch.remainder(epoch.long() - 1, w1)  # at e = 0: harmless, as in update
    # A mask rather than ring[:, slot] = ...: indexing by a 0-d tensor does not compile.
    cols = torch.arange(w1, device=ring.device)
    ring.masked_fill_(missing[:, None] & (cols == slot), float("nan"))
    folded = (1.0 - decay) * score + decay * window_deviation(ring)
    score.copy_(torch.where(epoch >= w1, folded, score))
    counters[EPOCH] += 1


schema.implement("update", update)
schema.implement("epoch_step", epoch_step)
