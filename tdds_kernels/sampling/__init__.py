"""Pruning inside the training run that scores: a sampler that switches to the kept set once the
tracker's trajectory is complete, its schedule helpers and optional per-sample weights
(docs/in_run.md)."""

from .order import EPOCH_LENGTHS, Schedule
from .sampler import PruningSampler
from .weights import WEIGHTINGS, PruningWeights

__all__ = ["PruningSampler", "PruningWeights", "Schedule", "EPOCH_LENGTHS", "WEIGHTINGS"]
