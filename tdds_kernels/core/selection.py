"""Turning scores into coresets: TDDS keeps the highest scores."""

from __future__ import annotations

import warnings

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
        raise ValueError(
            "select: expected exactly one of prune_fraction and keep_fraction, got "
            f"prune_fraction={prune_fraction!r}, keep_fraction={keep_fraction!r}"
        )
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
    scores = _check_scores(scores)
    k = num_kept(scores.numel(), prune_fraction, keep_fraction)
    if k < scores.numel() and bool((scores == scores[0]).all()):
        # All ties: the kept set is just the lowest dataset indices (e.g. scores() read before any
        # window was folded), which looks like a ranking but carries none.
        warnings.warn(
            f"select: all {scores.numel()} scores are equal ({float(scores[0])!r}), so the kept set is "
            "just the lowest dataset indices; were the scores read before any window was folded?",
            RuntimeWarning,
            stacklevel=2,
        )
    order = descending_order(scores)
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


# ---------------------------------------------------------------------------- coreset strategies
# Every strategy returns the kept dataset indices (int64, ascending) and is deterministic given
# its seed; scores follow the "higher means keep" (= harder) convention of TDDS.

top = select


def _check_labels(labels, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.numel() != n:
        raise ValueError(f"labels: expected shape ({n},) to match scores, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer dtype, got {labels.dtype}")
    labels = labels.to(torch.int64).cpu()
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels: expected class labels >= 0, got {int(labels.min())}")
    return labels


def _generator(seed) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def random_subset(n: int, prune_fraction=None, keep_fraction=None, seed: int = 0) -> torch.Tensor:
    """A uniformly random subset of range(n) of the size select() would keep."""
    k = num_kept(n, prune_fraction, keep_fraction)
    return torch.sort(torch.randperm(n, generator=_generator(seed))[:k]).values


def _proportional_quota(sizes: torch.Tensor, k: int) -> torch.Tensor:
    """Split k over groups proportionally to `sizes` (largest remainder; ties to the lower group)."""
    exact = sizes.double() * k / sizes.sum()
    quota = exact.floor().long()
    short = k - int(quota.sum())
    if short:
        order = torch.sort(-(exact - quota), stable=True).indices
        quota[order[:short]] += 1
    return quota


def class_balanced(scores, labels, prune_fraction=None, keep_fraction=None) -> torch.Tensor:
    """Top scores within each class, each class keeping its share of the budget.

    Class c with n_c of the N samples keeps its highest round(k·n_c/N) (largest-remainder
    rounding, so the total is exactly the k select() keeps); so the kept set has the class mix
    of the full set, whatever the scores favour.
    """
    s = _check_scores(scores).cpu()
    y = _check_labels(labels, s.numel())
    k = num_kept(s.numel(), prune_fraction, keep_fraction)
    classes, sizes = torch.unique(y, return_counts=True)
    quota = _proportional_quota(sizes, k)
    kept = [
        torch.nonzero(y == c).squeeze(1)[descending_order(s[y == c])[:q]]
        for c, q in zip(classes.tolist(), quota.tolist())
    ]
    return torch.sort(torch.cat(kept)).values


def ccs(
    scores, prune_fraction=None, keep_fraction=None, hard_cut: float = 0.1, bins: int = 50, seed: int = 0
) -> torch.Tensor:
    """Coverage-centric coreset selection (Zheng et al., ICLR 2023).

    1. Drop the `hard_cut` fraction of the N samples with the highest scores (the hardest; at
       high pruning rates they are mostly noise the small budget cannot afford). The cut is
       reduced if it would leave fewer than the k samples to keep.
    2. Split the score range of the rest into `bins` equal-width strata.
    3. Spread the budget over the strata, smallest stratum first: each takes
       min(its size, floor(budget left / strata left)) samples uniformly at random, so sparse
       strata are kept whole and the rest is shared evenly. This always fills exactly k.
    """
    s = _check_scores(scores).cpu()
    n = s.numel()
    k = num_kept(n, prune_fraction, keep_fraction)
    if not 0.0 <= float(hard_cut) < 1.0:
        raise ValueError(f"hard_cut: expected a fraction in [0, 1), got {hard_cut!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: expected an int >= 1, got {bins!r}")
    gen = _generator(seed)
    cut = min(int(float(hard_cut) * n), n - k)
    pool = descending_order(s)[cut:]
    ps = s[pool].double()
    lo, hi = ps.min(), ps.max()
    width = (hi - lo) / bins
    stratum = torch.zeros_like(pool) if bool(width == 0) else ((ps - lo) / width).long().clamp(max=bins - 1)
    members = [pool[stratum == b] for b in range(bins)]
    members = sorted((m for m in members if m.numel()), key=lambda m: m.numel())  # stable: ties by bin
    kept, budget = [], k
    for i, m in enumerate(members):
        take = min(m.numel(), budget // (len(members) - i))
        kept.append(m[torch.randperm(m.numel(), generator=gen)[:take]])
        budget -= take
    return torch.sort(torch.cat(kept)).values


STRATEGIES = ("top", "random", "class_balanced", "ccs")


def select_coreset(
    strategy: str, scores=None, labels=None, prune_fraction=None, keep_fraction=None, seed: int = 0, **options
) -> torch.Tensor:
    """One entry for every strategy: kept dataset indices (int64, ascending).

    `scores` is required except for "random" (which only needs its length, from scores or
    labels); `labels` only for "class_balanced"; `options` go to ccs (hard_cut, bins).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if options and strategy != "ccs":
        raise TypeError(f"select_coreset: {strategy!r} takes no options, got {sorted(options)}")
    if strategy == "random":
        ref = scores if scores is not None else labels
        if ref is None:
            raise ValueError("random: expected scores or labels to give the dataset size")
        return random_subset(len(ref), prune_fraction, keep_fraction, seed)
    if scores is None:
        raise ValueError(f"scores: required by strategy {strategy!r}")
    if strategy == "top":
        return select(scores, prune_fraction, keep_fraction)
    if strategy == "class_balanced":
        if labels is None:
            raise ValueError("labels: required by strategy 'class_balanced'")
        return class_balanced(scores, labels, prune_fraction, keep_fraction)
    return ccs(scores, prune_fraction, keep_fraction, seed=seed, **options)
