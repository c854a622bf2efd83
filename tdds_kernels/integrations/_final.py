"""A complete tracker's checkpoint without the N x C recording state (for the trainer callbacks),
and where such files live beside a trainer's checkpoint."""

from __future__ import annotations

import os

import torch.distributed as dist

from ..core.checkpoint import save_atomic
from ..core.config import TrackerConfig
from ..core.state import RECORDING as _RECORDING_STATE
from ..core.state import initial_values


def final_state(sd: dict) -> dict:
    """A complete tracker's state dict without the recording state (a few bytes per sample)."""
    if not sd.get("complete"):
        raise ValueError("state_dict: only a complete tracker's state can drop its recording state")
    out = {k: v for k, v in sd.items() if k not in _RECORDING_STATE}
    out["final"] = True
    return out


def expand_final_state(sd: dict) -> dict:
    """A loadable state dict from final_state(): the recording state refilled with its initial
    values (unused by a complete tracker) as broadcast views, so loading allocates no N x C
    temporary; any other state dict is returned as it is."""
    if not isinstance(sd, dict) or not sd.get("final"):
        return sd
    fresh = initial_values(TrackerConfig.from_dict(sd["config"]))
    out = {k: v for k, v in sd.items() if k != "final"}
    out.update({name: fresh[name] for name in _RECORDING_STATE if name in fresh})
    return out


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


def save_final(tracker, path: str) -> None:
    """Write a complete tracker's final_state() to final_path(path), one file per rank when
    sharded; a failed write raises on every rank (none is left waiting)."""
    group, exc = tracker.process_group, None
    try:
        save_atomic(final_state(tracker.state_dict()), rank_file(final_path(path), group))
    except Exception as e:
        exc = e
    if group is None:
        if exc is not None:
            raise exc
        return
    from ..distributed.collectives import agree

    agree(group, exc, "TDDSCallback: writing the tracker's final checkpoint", device=tracker.device)
