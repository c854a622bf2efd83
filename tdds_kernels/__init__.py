"""tdds_kernels: online TDDS (Temporal Dual-Depth Scoring) dataset pruning for PyTorch trainers."""
from .core.selection import importance_weights, select, select_coreset
from .core.tracker import TDDSTracker
from .data import IndexedDataset
from .distributed import ShardedTDDSTracker, merge_shards  # also registers the sharded constructor
from .ops import reference  # noqa: F401  (registers the reference ops tdds::update / tdds::epoch_step)
from .ops.registry import available as available_backends

__version__ = "0.1.0"
__all__ = ["TDDSTracker", "ShardedTDDSTracker", "merge_shards", "select", "select_coreset", "importance_weights",
           "IndexedDataset", "available_backends", "__version__"]
