"""tdds_kernels: online TDDS (Temporal Dual-Depth Scoring) dataset pruning for PyTorch trainers.

Layers, each importing only from those before it:
    ops/          the op contract (schemas) and its implementations: reference, Triton, C++/CUDA
    core/         the tracker: config, per-sample state, checkpoints, baselines, selection
    distributed/  the sharded tracker: layout of the samples over ranks, collectives, the factory
    offline.py, cli/, demo/, integrations/   the application: dump scoring, commands, trainers

The public names below are imported on first use (PEP 562), not by `import tdds_kernels`: the
command line's --help and --version then answer without importing torch (seconds on a cold
start). The first access of any of them imports the whole library at once, which also registers
the reference ops. make_tracker builds a TDDSTracker or, given a process group (or under
torchrun), a ShardedTDDSTracker; both implement tdds_kernels.core.protocol.Tracker.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "TDDSTracker": ".core.tracker",
    "ShardedTDDSTracker": ".distributed",
    "make_tracker": ".distributed",
    "load_tracker": ".distributed",
    "merge_shards": ".distributed",
    "select": ".core.selection",
    "select_coreset": ".core.selection",
    "importance_weights": ".core.selection",
    "keep_scores": ".core.baselines",
    "IndexedDataset": ".data",
    "PruningSampler": ".sampling",
    "PruningWeights": ".sampling",
    "available_backends": ".ops.registry",
}
__all__ = [*_EXPORTS, "__version__"]


def load() -> None:
    """Import the library (idempotent): the names above and the reference ops."""
    for module in ("ops.reference",):  # side effect: the registrations
        importlib.import_module(f".{module}", __name__)
    for name, module in _EXPORTS.items():
        attr = "available" if name == "available_backends" else name
        globals()[name] = getattr(importlib.import_module(module, __name__), attr)


def __getattr__(name: str):
    if name in _EXPORTS:
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
