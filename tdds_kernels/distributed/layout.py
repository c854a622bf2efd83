"""ShardLayout: which rank owns which sample, and the one split/merge of a tracker's state.

Ownership rule: rank r of a group of W ranks owns the samples n with ``n % W == r`` and keeps them
in local row ``n // W`` (a strided split: shard sizes differ by at most one row, and stacking
equal padded shards then reading them column-wise gives dataset order without an index tensor).

A tracker state dict (tdds_kernels.core.checkpoint) splits into W shard state dicts and merges
back with split_state / merge_states; which entries are per sample and which add up over the
shards is declared by tdds_kernels.core.state and tdds_kernels.core.baselines, not
guessed here. merge_shards (files), ShardedTDDSTracker.full_state_dict (a collective) and
load_full_state_dict all go through these two functions.
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import baselines as baselines_mod
from ..core import state as state_mod

OWNERSHIP = "strided: rank r owns the samples n with n % world_size == r, at local row n // world_size"


@dataclasses.dataclass(frozen=True)
class ShardLayout:
    num_samples: int
    world_size: int

    def owner(self, index: torch.Tensor) -> torch.Tensor:
        return index.remainder(self.world_size)

    def local_row(self, index: torch.Tensor) -> torch.Tensor:
        return index // self.world_size

    def shard_size(self, rank: int) -> int:
        return (self.num_samples - rank + self.world_size - 1) // self.world_size

    @property
    def padded_size(self) -> int:
        """Rows of the largest shard: every rank pads to it for an all_gather."""
        return -(-self.num_samples // self.world_size)

    def take(self, full: torch.Tensor, rank: int) -> torch.Tensor:
        """Rank `rank`'s rows of a per-sample tensor (a copy)."""
        return full[rank :: self.world_size].clone()

    def interleave(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The (N, ...) tensor by dataset index from every rank's rows, in rank order."""
        out = parts[0].new_empty((self.num_samples, *parts[0].shape[1:]))
        for r, part in enumerate(parts):
            out[r :: self.world_size] = part
        return out

    # ------------------------------------------------------------------ state dicts
    def split_state(self, sd: dict, rank: int) -> dict:
        """Rank `rank`'s shard of a whole-dataset tracker state dict (no "shard" entry added).

        Counts go to rank 0 so their sum over the ranks stays the same; every rank keeps the
        epoch."""
        local_n = self.shard_size(rank)
        shard = dict(sd)
        shard["config"] = dict(sd["config"], num_samples=local_n)
        for key in state_mod.PER_SAMPLE:
            if isinstance(sd.get(key), torch.Tensor) and sd[key].dim() >= 1:
                shard[key] = self.take(sd[key], rank)
        for key in state_mod.SUMMED_COUNTERS:
            if rank and isinstance(sd.get(key), torch.Tensor):
                shard[key] = sd[key].clone()
                shard[key][: state_mod.NUM_SUMMED_SLOTS] = 0
        for key in state_mod.SUMMED_SCALARS:
            shard[key] = int(sd.get(key, 0)) // self.world_size
        if sd.get("baselines") is not None:
            b = dict(sd["baselines"])
            b["config"] = dict(b["config"], num_samples=local_n)
            for key in baselines_mod.PER_SAMPLE:
                if isinstance(b.get(key), torch.Tensor) and b[key].dim() >= 1:
                    b[key] = self.take(b[key], rank)
            shard["baselines"] = b
        return shard

    def merge_states(self, shards: list[dict]) -> dict:
        """The whole-dataset state dict from every rank's shard state dict, in rank order."""
        first = shards[0]
        full = {key: value for key, value in first.items() if key != "shard"}
        full["config"] = dict(first["config"], num_samples=self.num_samples)
        for key in (k for k in state_mod.PER_SAMPLE if k in first):  # the config decides which
            full[key] = self.interleave([sd[key] for sd in shards])
        k = state_mod.NUM_SUMMED_SLOTS
        for key in state_mod.SUMMED_COUNTERS:  # counts summed, the epoch slot kept
            full[key] = torch.cat([sum(sd[key][:k] for sd in shards), first[key][k:]])
        for key in state_mod.SUMMED_SCALARS:
            full[key] = sum(int(sd[key]) for sd in shards)
        if first.get("baselines") is not None:
            b = dict(first["baselines"])
            b["config"] = dict(b["config"], num_samples=self.num_samples)
            for key in baselines_mod.PER_SAMPLE:
                b[key] = self.interleave([sd["baselines"][key] for sd in shards])
            full["baselines"] = b
        return full
