"""The one place that decides between a single and a sharded tracker.

A process group (given, or the default one when torch.distributed runs with more than one rank)
means a ShardedTDDSTracker over it; anything else a TDDSTracker. The same loop code then works
under ``python train.py`` and ``torchrun --nproc_per_node=K train.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ..core.tracker import TDDSTracker
from .shard_files import shard_path
from .sharded import ShardedTDDSTracker


def default_group(process_group=None):
    """`process_group`, else the default group when more than one rank runs, else None."""
    if process_group is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return process_group


def make_tracker(num_samples: int, num_classes: int, device="cpu", process_group=None, **kwargs):
    """A TDDSTracker for this process, sharded over `process_group` (default: see default_group)."""
    group = default_group(process_group)
    if group is None:
        return TDDSTracker(num_samples, num_classes, device=device, **kwargs)
    return ShardedTDDSTracker(num_samples, num_classes, device=device, process_group=group, **kwargs)


def checkpoint_exists(path, device="cpu", process_group=None) -> bool:
    """Whether a tracker checkpoint is there to resume from: for a sharded run, whether every
    rank finds its shard (each looks on its own disk; the ranks agree), else the single file."""
    group = default_group(process_group)
    if group is None:
        return Path(path).exists()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    found = torch.tensor([int(shard_path(path, rank, world).exists())], device=device)
    dist.all_reduce(found, op=dist.ReduceOp.MIN, group=group)
    return bool(found.item())


def load_tracker(path, device="cpu", process_group=None, **kwargs):
    """Resume what make_tracker(...).save(path) wrote, sharded or not, as make_tracker decides."""
    group = default_group(process_group)
    if group is None:
        return TDDSTracker.load(path, device=device, **kwargs)
    return ShardedTDDSTracker.load(path, device=device, process_group=group, **kwargs)
