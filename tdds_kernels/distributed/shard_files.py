"""Shard checkpoint files of the sharded tracker: one file per rank (shard_path), each read and
checked whole before anything is allocated (read_shard), and merged back into a single tracker's
state dict on one machine (merge_shards)."""

from __future__ import annotations

import os
from pathlib import Path

from ..core import checkpoint
from ..core.config import TrackerConfig
from ..core.tracker import check_state_dict
from .layout import ShardLayout


def shard_path(path, rank: int, world_size: int) -> Path:
    """The file rank `rank` of `world_size` reads and writes for the checkpoint `path`."""
    path = Path(path)
    return path.with_name(f"{path.name}.rank{rank}-of-{world_size}")


def read_shard(path, rank: int, world: int) -> tuple[dict, TrackerConfig]:
    """Rank `rank`'s shard state dict of the checkpoint `path` and the whole tracker's config,
    checked against the shard's own config; raises naming the file if it is missing or does not fit."""
    file = shard_path(path, rank, world)
    if not file.exists():
        others = sorted(p.name for p in Path(path).parent.glob(Path(path).name + ".rank*-of-*"))
        raise FileNotFoundError(
            f"{file}: no shard for rank {rank} of {world}; found "
            f"{others or 'no shards'} (load with the world size that saved)"
        )
    sd = checkpoint.read(file)
    if not isinstance(sd.get("shard"), dict):
        raise ValueError(f"{file}: not a {checkpoint.FORMAT} shard checkpoint")
    config = TrackerConfig.from_dict(
        dict(sd.get("config") or {}, num_samples=sd["shard"].get("num_samples")), f"{file}: config"
    )
    # the whole shard against its own config, before the constructor allocates (and before
    # its collective: a rank raising there would leave the others waiting)
    local_config = TrackerConfig.from_dict(sd.get("config"), f"{file}: config")
    check_state_dict(local_config, {k: v for k, v in sd.items() if k != "shard"}, str(file))
    if ShardLayout(config.num_samples, world).shard_size(rank) != local_config.num_samples:
        raise ValueError(f"{file}: shard num_samples {config.num_samples} does not fit its own config")
    return sd, config


def merge_shards(path, world_size: int) -> dict:
    """The single-tracker state dict of a sharded checkpoint, read from all its shard files on
    one machine (no process group; N·C memory). Load it with TDDSTracker.load_state_dict to
    score on one machine, or with load_full_state_dict to resume on another world size."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an int >= 1 (the number of shard files), got {world_size!r}")
    for r in range(world_size):
        if not os.path.exists(shard_path(path, r, world_size)):
            hint = (
                "; it exists as one file: a single tracker's checkpoint (TDDSTracker.load)"
                if os.path.isfile(path)
                else ""
            )
            raise FileNotFoundError(
                f"{shard_path(path, r, world_size)}: no such shard file (merge_shards reads "
                f"{shard_path(path, 0, world_size)} .. rank{world_size - 1}-of-{world_size} for {path}{hint})"
            )
    shards = [checkpoint.read(shard_path(path, r, world_size)) for r in range(world_size)]
    infos = [sd.get("shard") or {} for sd in shards]
    if [i.get("rank") for i in infos] != list(range(world_size)) or len(
        {(i.get("run_id"), i.get("saves"), sd.get("epoch")) for i, sd in zip(infos, shards)}
    ) != 1:
        raise ValueError(f"{path}: the {world_size} shards do not belong together")
    return ShardLayout(infos[0]["num_samples"], world_size).merge_states(shards)
