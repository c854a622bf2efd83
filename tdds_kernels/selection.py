"""Turning scores into coresets: TDDS keeps the highest scores."""
from __future__ import annotations

import torch


def _check_scores(scores) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"scores: expected a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.double()
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"scores: expected no NaN, got {int(torch.isnan(scores).sum())}")
    return scores


def descending_order(scores) -> torch.Tensor:
    """Dataset indices from highest to lowest score; ties keep the lower index first."""
    scores = _check_scores(scores)
    return torch.sort(scores, descending=True, stable=True).indices


def ascending_order(scores) -> torch.Tensor:
    """The release's `data_mask`: lowest score first (the first prune_fraction·N are dropped).

    The exact reverse of descending_order, so dropping its head keeps what select() keeps.
    """
    return descending_order(scores).flip(0)


def num_kept(n: int, prune_fraction=None, keep_fraction=None) -> int:
    """How many of n samples a fraction keeps: n − int(prune·n) as the release, or round(keep·n)."""
    if (prune_fraction is None) == (keep_fraction is None):
        raise ValueError("select: expected exactly one of prune_fraction and keep_fraction, got "
                         f"prune_fraction={prune_fraction!r}, keep_fraction={keep_fraction!r}")
    if prune_fraction is not None:
        if not 0.0 <= float(prune_fraction) < 1.0:
            raise ValueError(f"prune_fraction: expected a fraction in [0, 1), got {prune_fraction!r}")
        return n - int(float(prune_fraction) * n)
    if not 0.0 < float(keep_fraction) <= 1.0:
        raise ValueError(f"keep_fraction: expected a fraction in (0, 1], got {keep_fraction!r}")
    return max(1, min(n, round(float(keep_fraction) * n)))


def select(scores, prune_fraction=None, keep_fraction=None) -> torch.Tensor:
    """Dataset indices (int64, ascending) of the samples kept: the highest scores.

    Give exactly one of `prune_fraction` (dropped share, as the release: int(prune·N) dropped)
    or `keep_fraction`. Ties break deterministically toward the lower dataset index.
    """
    order = descending_order(scores)
    k = num_kept(order.numel(), prune_fraction, keep_fraction)
    return torch.sort(order[:k]).values.to(torch.int64)


def importance_weights(scores) -> torch.Tensor:
    """Min–max normalized scores in [0, 1] (all ones if every score is equal).

    The release retrains on the kept subset with each batch's loss scaled by the mean of these
    weights over the batch: ``loss = criterion(out, y) * weights[idx].mean()``.
    """
    s = _check_scores(scores).to(torch.float32)
    lo, hi = s.min(), s.max()
    if bool(hi == lo):
        return torch.ones_like(s)
    return (s - lo) / (hi - lo)
