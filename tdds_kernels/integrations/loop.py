"""Helpers for hand-written training loops (plain PyTorch, torchrun + DDP): the single-or-sharded
decision lives in tdds_kernels.distributed.factory; this is its public path for loops."""

from ..distributed.factory import checkpoint_exists, load_tracker, make_tracker

__all__ = ["make_tracker", "load_tracker", "checkpoint_exists"]
