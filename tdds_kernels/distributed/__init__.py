"""Sharded TDDS state over torch.distributed: ``ShardedTDDSTracker(..., process_group=pg)``.

layout    ShardLayout: owner and local row of a sample, shard sizes, split/merge of a state
sharded   ShardedTDDSTracker (holds a TDDSTracker for its shard), merge_shards
factory   make_tracker / load_tracker / checkpoint_exists: single or sharded, decided once
"""

from .factory import checkpoint_exists, load_tracker, make_tracker
from .layout import ShardLayout
from .shard_files import merge_shards, shard_path
from .sharded import ShardedTDDSTracker

__all__ = [
    "ShardedTDDSTracker",
    "ShardLayout",
    "merge_shards",
    "shard_path",
    "make_tracker",
    "load_tracker",
    "checkpoint_exists",
]
