"""A complete tracker's checkpoint without the N x C recording state: now
tdds_kernels.core.checkpoint.final_state / expand_final_state (what tracker.save(path, final=True)
writes); kept importable here for callers of earlier releases."""

from ..core.checkpoint import expand_final_state, final_state

__all__ = ["final_state", "expand_final_state"]
