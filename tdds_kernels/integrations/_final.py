"""Where the trainer callbacks keep a complete tracker's checkpoint (``tracker.save(path,
final=True)``: no N x C recording state) beside a trainer's checkpoint, and how many processes
wrote a sharded one. final_state / expand_final_state now live in tdds_kernels.core.checkpoint;
they stay importable here for callers of earlier releases."""

from __future__ import annotations

import os

import torch.distributed as dist

from ..core.checkpoint import expand_final_state, final_state

__all__ = ["final_state", "expand_final_state", "final_path", "rank_file", "saved_world_size"]


def final_path(path: str) -> str:
    """Where a complete tracker's checkpoint of `path` goes: under its own name, so its existence
    alone says which loader to use."""
    root, ext = os.path.splitext(path)
    return root + ".final" + ext


def rank_file(path: str, group) -> str:
    """This rank's file of `path` (a sharded tracker's one file per rank; `path` itself unsharded)."""
    if group is None:
        return path
    from ..distributed import shard_path

    return str(shard_path(path, dist.get_rank(group), dist.get_world_size(group)))


def saved_world_size(path: str) -> int | None:
    """The world size of the per-rank files `path`.rank0-of-W a sharded run left, if any."""
    folder, name = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return None
    sizes = [n[len(name) + len(".rank0-of-") :] for n in names if n.startswith(name + ".rank0-of-")]
    return int(sizes[0]) if len(sizes) == 1 and sizes[0].isdigit() else None
