"""The retraining run's sampler: the kept set, reshuffled per epoch, split over ranks.

The same orders as PruningSampler's epochs after the switch (sampling/order.py): epoch e is the
kept set shuffled from ``seed + e``, so a resumed run that calls ``set_epoch`` takes the same
batches, and under DDP each rank takes every num_replicas-th index of it (DistributedSampler's
split, padded with the head of the order so every rank takes as many steps).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from . import order


def default_ranks(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """DistributedSampler's defaults: the default process group's size and rank, else one rank."""
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas: expected an int >= 1, got {num_replicas!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank: expected an int in [0, {num_replicas}), got {rank!r}")
    return num_replicas, rank


class KeptSampler(Sampler[int]):
    """Dataset indices of `kept` (int64, 1-D, checked by the caller), one epoch per iteration."""

    def __init__(self, kept: torch.Tensor, shuffle: bool, seed: int, num_replicas=None, rank=None, drop_last=False):
        self.kept, self.shuffle, self.seed, self.drop_last = kept, bool(shuffle), seed, bool(drop_last)
        self.num_replicas, self.rank = default_ranks(num_replicas, rank)
        self.epoch = 0
        self._started = self._set_epoch_called = self._warned = False

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (every rank, before iterating it): its order is the kept set shuffled from seed + epoch."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        self.epoch, self._started, self._set_epoch_called = epoch, False, True

    def __len__(self) -> int:
        return order.rank_length(self.kept.numel(), self.num_replicas, self.drop_last)

    def __iter__(self):
        if self._started:  # iterated again without set_epoch: the next epoch
            if self.num_replicas > 1 and not self._set_epoch_called and not self._warned:
                self._warned = True
                order.warn_unset_epoch(self.num_replicas)
            self.epoch += 1
        self._started = True
        whole = order.epoch_order(self.kept.numel(), self.kept, self.epoch, self.seed, self.shuffle, "pruned")
        return iter(order.split_for_rank(whole, self.num_replicas, self.rank, self.drop_last).tolist())
