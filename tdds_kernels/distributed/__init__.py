"""Sharded TDDS state over torch.distributed: ``TDDSTracker(..., process_group=pg)``."""
from .sharded import ShardedTDDSTracker, merge_shards, shard_path

__all__ = ["ShardedTDDSTracker", "merge_shards", "shard_path"]
