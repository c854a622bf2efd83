"""Helpers for hand-written training loops (plain PyTorch, torchrun + DDP)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ..core.tracker import TDDSTracker


def make_tracker(num_samples: int, num_classes: int, device="cpu", process_group=None, **kwargs) -> TDDSTracker:
    """A TDDSTracker for this process: sharded over `process_group` (default: the default group)
    when torch.distributed runs with more than one rank, a single tracker otherwise. The same
    loop code then works under ``python train.py`` and ``torchrun --nproc_per_node=K train.py``."""
    process_group = _default_group(process_group)
    return TDDSTracker(num_samples, num_classes, device=device, process_group=process_group, **kwargs)


def _default_group(process_group):
    if process_group is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return process_group


def checkpoint_exists(path, device="cpu", process_group=None) -> bool:
    """Whether a tracker checkpoint is there to resume from: for a sharded run, whether every
    rank finds its shard (each looks on its own disk; the ranks agree), else the single file."""
    process_group = _default_group(process_group)
    if process_group is None:
        return Path(path).exists()
    from ..distributed import shard_path

    world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    found = torch.tensor([int(shard_path(path, rank, world).exists())], device=device)
    dist.all_reduce(found, op=dist.ReduceOp.MIN, group=process_group)
    return bool(found.item())


def load_tracker(path, device="cpu", process_group=None, **kwargs) -> TDDSTracker:
    """Resume what make_tracker(...).save(path) wrote, sharded or not, like make_tracker decides."""
    process_group = _default_group(process_group)
    if process_group is not None:
        from ..distributed import ShardedTDDSTracker

        return ShardedTDDSTracker.load(path, device=device, process_group=process_group, **kwargs)
    return TDDSTracker.load(path, device=device, **kwargs)
