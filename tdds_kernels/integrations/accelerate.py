"""Hugging Face Accelerate: a tracker for the accelerator's processes, saved by ``save_state``.

    from tdds_kernels.integrations.accelerate import make_tracker, TrackerState

    tracker = make_tracker(accelerator, num_samples=len(train_set), num_classes=10, trajectory_len=30)
    accelerator.register_for_checkpointing(TrackerState(tracker))
    ...                                   # per step: tracker.update(logits, index); per epoch: end_epoch()
    accelerator.save_state(folder)        # writes the tracker with the model, optimizer, ...
    accelerator.load_state(folder)        # restores it, on any number of processes

Why an adapter rather than registering the tracker itself: with more than one process the
tracker is sharded, and ``save_state`` writes registered objects from the main process only, so
the tracker's own ``state_dict()`` (this rank's shard) would lose every other rank's rows.
``TrackerState`` gives Accelerate the whole state instead (``full_state_dict()``, assembled on
every rank: N x C memory on each while it lasts) and every rank takes its rows back from it
(``load_full_state_dict()``), so a checkpoint resumes on any number of processes.

Resume is exact when training continues from the same step: after ``load_state`` a loop that
skips the batches already done in the open epoch (``accelerator.skip_first_batches``) feeds the
tracker the rest of that epoch, as an uninterrupted run would.
"""

from __future__ import annotations

import torch

from ..core.protocol import Tracker, check_tracker
from ..distributed import factory


def _tracker_device(device) -> torch.device:
    # Accelerate hands out "cpu:0"-style devices; CPU tensors report plain "cpu".
    device = torch.device(device)
    return torch.device("cpu") if device.type == "cpu" else device


def make_tracker(accelerator, num_samples: int, num_classes: int, **kwargs) -> Tracker:
    """A tracker on ``accelerator.device``, sharded over the processes when there are several."""
    if "device" in kwargs or "process_group" in kwargs:
        raise ValueError("device / process_group: set from the accelerator")
    # make_tracker resolves the process group: Accelerate's default group when num_processes > 1
    return factory.make_tracker(num_samples, num_classes, device=_tracker_device(accelerator.device), **kwargs)


class TrackerState:
    """What to pass to ``accelerator.register_for_checkpointing`` for a (sharded or single) tracker."""

    def __init__(self, tracker: Tracker):
        check_tracker(tracker)
        self.tracker = tracker

    def state_dict(self) -> dict:
        # Called on every process by save_state; collective for a sharded tracker.
        return self.tracker.full_state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        # Called on every process by load_state, each with the whole state.
        self.tracker.load_full_state_dict(state_dict)
