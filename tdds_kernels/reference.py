"""Pure-PyTorch statement of the TDDS formula: the reference every backend is checked against.

Vectorized over rows and samples (no Python loop over either); runs on any device.

    p_t = softmax(z_t)                                  float32 whatever the logits' dtype
    d_t = Σ_c | p_{t+1,c} · (log(p_{t+1,c} + ε) − log(p_{t,c} + ε)) |      ε = 1e-8
    R_k = sqrt(Σ_j (d_j − m_k)²)  over the defined d_k..d_{k+W−2},  m_k their mean
    S   ← (1 − β)·S + β·R_k       once per window, in order
"""
from __future__ import annotations

import torch

from . import _ops
from ._ops import DUPLICATES, EPS, MISSING, NONFINITE, OUT_OF_RANGE

UPDATE, EPOCH_STEP = _ops.define_sibling("")


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


def update(logits, index, prev, seen, ring, counters, epoch: int) -> None:
    """Record one batch of epoch `epoch` (DESIGN.md §3)."""
    n_samples = prev.shape[0]
    idx = index.to(torch.long)
    in_range = (idx >= 0) & (idx < n_samples)
    x = logits.to(torch.float32)
    finite = torch.isfinite(x).all(dim=1)
    usable = in_range & finite
    safe = torch.where(in_range, idx, torch.zeros_like(idx))
    # A row whose sample was already recorded this epoch is a duplicate; within the batch the
    # first usable occurrence of each sample wins, so two rows never mix.
    fresh = usable & (seen[safe] != epoch)
    rows = torch.nonzero(fresh).squeeze(1)
    rows = rows[first_occurrences(idx[rows])]
    n_dup = usable.sum() - rows.numel()

    n = idx[rows]
    p = torch.softmax(x[rows], dim=1)
    log_p = torch.log(p + EPS)
    if epoch >= 1:
        d = contribution(p, log_p, prev[n].to(torch.float32))
        d = torch.where(seen[n] == epoch - 1, d, torch.full_like(d, float("nan")))
        ring[n, (epoch - 1) % ring.shape[1]] = d
    prev[n] = log_p.to(prev.dtype)
    seen[n] = epoch

    counters[DUPLICATES] += n_dup
    counters[NONFINITE] += (in_range & ~finite).sum()
    counters[OUT_OF_RANGE] += (~in_range).sum()


def window_deviation(ring: torch.Tensor) -> torch.Tensor:
    """R per sample: L2 norm of the defined d's deviations from their mean; 0 if < 2 defined."""
    defined = ~torch.isnan(ring)
    count = defined.sum(dim=1)
    values = torch.where(defined, ring, torch.zeros_like(ring))
    mean = values.sum(dim=1) / count.clamp(min=1)
    dev = torch.where(defined, ring - mean[:, None], torch.zeros_like(ring))
    r = dev.square().sum(dim=1).sqrt()
    return torch.where(count >= 2, r, torch.zeros_like(r))


def epoch_step(seen, ring, score, counters, epoch: int, decay: float) -> None:
    """Close epoch `epoch`: mark missing samples, then fold window k = epoch−W+1 into the EMA."""
    missing = seen != epoch
    counters[MISSING] += missing.sum()
    w1 = ring.shape[1]
    if epoch >= 1:
        ring[:, (epoch - 1) % w1].masked_fill_(missing, float("nan"))
    if epoch >= w1:
        score.mul_(1.0 - decay).add_(window_deviation(ring), alpha=decay)


for _name, _fn in (("update", update), ("epoch_step", epoch_step)):
    for _key in ("CPU", "CUDA"):
        _ops._lib.impl(_name, _fn, _key)
