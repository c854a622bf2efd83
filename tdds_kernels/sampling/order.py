"""What one epoch of the PruningSampler yields, as pure functions of its settings: the order of
the whole epoch, its split over the ranks, and the steps per epoch a schedule needs.

Before the switch the order is DistributedSampler's (``torch.randperm(N)`` from a generator
seeded with ``seed + epoch``, padded or cut to a multiple of the ranks, rank r taking every
R-th index from r), so a run that never prunes takes exactly DistributedSampler's batches.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

# How long an epoch after the switch is: the kept set once ("pruned"), or N samples drawn from
# it by cycling through fresh shuffles of it ("repeat") or with replacement ("replacement").
EPOCH_LENGTHS = ("pruned", "repeat", "replacement")


def epoch_order(num_samples: int, kept, epoch: int, seed: int, shuffle: bool, epoch_length: str) -> torch.Tensor:
    """The epoch's dataset indices (int64) before the split over ranks; `kept` None: every index."""
    g = torch.Generator().manual_seed(seed + epoch)
    if kept is None:
        return torch.randperm(num_samples, generator=g) if shuffle else torch.arange(num_samples)
    k = kept.numel()
    if epoch_length == "pruned":
        return kept[torch.randperm(k, generator=g)] if shuffle else kept.clone()
    if epoch_length == "repeat":
        # Each pass is a fresh shuffle, so every kept sample appears floor(N/k) or ceil(N/k) times.
        passes = [kept[torch.randperm(k, generator=g)] if shuffle else kept for _ in range(-(-num_samples // k))]
        return torch.cat(passes)[:num_samples]
    return kept[torch.randint(k, (num_samples,), generator=g)]  # "replacement"


def epoch_size(num_samples: int, num_kept: int, pruned: bool, epoch_length: str) -> int:
    """Samples in the whole epoch (all ranks together, before padding)."""
    return num_kept if pruned and epoch_length == "pruned" else num_samples


def rank_length(size: int, num_replicas: int, drop_last: bool) -> int:
    """Samples per rank for an epoch of `size`: DistributedSampler's rule (pad up, or cut down
    with drop_last), so every rank takes the same number of steps."""
    return size // num_replicas if drop_last else -(-size // num_replicas)


def split_for_rank(order: torch.Tensor, num_replicas: int, rank: int, drop_last: bool) -> torch.Tensor:
    per_rank = rank_length(order.numel(), num_replicas, drop_last)
    total = per_rank * num_replicas
    if total > order.numel():  # pad with the head of the order, cycled as often as needed
        order = order.repeat(-(-total // order.numel()))
    return order[:total][rank:total:num_replicas]


def steps(samples: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches a DataLoader makes of `samples` (its drop_last drops a short last batch)."""
    return samples // batch_size if drop_last else -(-samples // batch_size)


class Schedule(NamedTuple):
    """Optimizer steps of a run of `epochs` epochs on one rank: the epochs before
    `switch_epoch` take `steps_before` each, the later ones `steps_after`."""

    switch_epoch: int
    steps_before: int
    steps_after: int
    total_steps: int


def schedule(
    epochs: int, switch_epoch: int, before_samples: int, after_samples: int, batch_size: int, drop_last: bool
) -> Schedule:
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    before = steps(before_samples, batch_size, drop_last)
    after = steps(after_samples, batch_size, drop_last)
    full = min(epochs, switch_epoch)
    return Schedule(switch_epoch, before, after, full * before + (epochs - full) * after)


def warn_unset_epoch(num_replicas: int) -> None:
    """Once per sampler: iterated again under several ranks without set_epoch."""
    warnings.warn(
        f"set_epoch: never called with num_replicas={num_replicas}; the sampler counts epochs by its "
        "iterations, so call sampler.set_epoch(epoch) on every rank before each epoch to keep the ranks "
        "and a resumed run on the loop's epoch",
        UserWarning,
        stacklevel=3,
    )
