"""tdds_kernels: online TDDS (Temporal Dual-Depth Scoring) dataset pruning for PyTorch trainers."""
from . import reference  # noqa: F401  (registers the reference ops tdds::update / tdds::epoch_step)
from .backends import available as available_backends
from .data import IndexedDataset
from .selection import importance_weights, select
from .tracker import TDDSTracker

__version__ = "0.1.0"
__all__ = ["TDDSTracker", "select", "importance_weights", "IndexedDataset", "available_backends",
           "__version__"]
