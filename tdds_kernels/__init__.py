"""tdds_kernels: online TDDS (Temporal Dual-Depth Scoring) dataset pruning for PyTorch trainers.

Layers, each importing only from those before it:
    ops/          the op contract (schemas) and its implementations: reference, Triton, C++/CUDA
    core/         the tracker: config, per-sample state, checkpoints, baselines, selection
    distributed/  the sharded tracker: layout of the samples over ranks, collectives, the factory
    offline.py, cli/, demo/, integrations/   the application: dump scoring, commands, trainers
"""

from .core.baselines import keep_scores
from .core.selection import importance_weights, select, select_coreset
from .core.tracker import TDDSTracker
from .data import IndexedDataset

# tdds_kernels.distributed also registers the constructor TDDSTracker(..., process_group=pg) routes to.
from .distributed import ShardedTDDSTracker, load_tracker, make_tracker, merge_shards
from .ops import reference  # noqa: F401  (registers the reference ops tdds::update / tdds::epoch_step)
from .ops.registry import available as available_backends
from .sampling import PruningSampler, PruningWeights

__version__ = "0.1.0"
__all__ = [
    "TDDSTracker",
    "ShardedTDDSTracker",
    "make_tracker",
    "load_tracker",
    "merge_shards",
    "select",
    "select_coreset",
    "importance_weights",
    "keep_scores",
    "IndexedDataset",
    "PruningSampler",
    "PruningWeights",
    "available_backends",
    "__version__",
]
