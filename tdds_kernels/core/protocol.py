"""Tracker: the contract every tracker keeps, single (core.tracker.TDDSTracker) or sharded over
ranks (distributed.sharded.ShardedTDDSTracker), so callers (retrain, the integrations, loops)
hold either without asking which.

The single tracker is rank 0 of a world of 1 with no process group. On a sharded tracker every
method and the ``stats`` property are collective (call them on every rank); ``state_dict`` /
``load_state_dict`` / ``save`` are then this rank's shard, and ``full_state_dict`` /
``load_full_state_dict`` the whole dataset's state, which any world size (1 included) loads.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch

from .config import TrackerConfig


class Tracker(Protocol):
    rank: int
    world_size: int
    process_group: object | None
    config: TrackerConfig
    on_nonfinite: str
    on_out_of_range: str

    num_samples: int
    num_classes: int
    window: int
    decay: float
    trajectory_len: int | None
    storage_dtype: torch.dtype
    prev_topk: int | None
    device: torch.device
    backend: str
    debug: bool
    epoch: int
    complete: bool
    rows_in_epoch: int
    stats: dict[str, int]

    def update(self, logits: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None = None) -> None: ...

    def end_epoch(self) -> None: ...

    def scores(self) -> torch.Tensor: ...

    def baseline_scores(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, sd: dict) -> None: ...

    def full_state_dict(self) -> dict: ...

    def load_full_state_dict(self, sd: dict) -> None: ...

    def save(self, path, final: bool = False) -> None: ...


# Every member the protocol declares: annotated attributes and properties, then the methods.
MEMBERS = (
    *Tracker.__annotations__,
    *(name for name, value in vars(Tracker).items() if inspect.isfunction(value) and not name.startswith("_")),
)


def check_tracker(obj, name: str = "tracker") -> None:
    """Raise a one-line TypeError unless `obj` has every member of Tracker. Looked up statically
    (inspect.getattr_static): reading a sharded tracker's ``stats`` would be a collective."""
    missing = [m for m in MEMBERS if _missing(obj, m)]
    if missing:
        raise TypeError(
            f"{name}: expected a TDDSTracker or ShardedTDDSTracker (what make_tracker builds), "
            f"got {type(obj).__name__} (without {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )


def _missing(obj, member: str) -> bool:
    try:
        inspect.getattr_static(obj, member)
    except AttributeError:
        return True
    return False
