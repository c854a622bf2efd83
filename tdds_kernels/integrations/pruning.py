"""In-run pruning for the trainer callbacks: a PruningSampler over a callback's tracker.

A trainer builds its train DataLoader before the callback builds (or restores) the tracker, and
a resumed run replaces the tracker with the checkpoint's. So the sampler is given a view of the
callback, not a tracker: the view answers for whichever tracker the callback holds when the
sampler asks (at ``set_epoch``), and the kept set is chosen from that tracker's scores. Choosing
it is deterministic (scores, strategy, seed), so a resumed run picks the same kept set from the
restored scores and the sampler needs no checkpoint state of its own at epoch boundaries.
"""

from __future__ import annotations

from ..core.config import TrackerConfig
from ..distributed.factory import default_group
from ..sampling import PruningSampler


class CallbackTracker:
    """What PruningSampler reads of a tracker, answered by the callback's current tracker."""

    def __init__(self, callback, tracker_kwargs: dict):
        self._callback = callback
        self.num_samples = int(callback.num_samples)
        config = TrackerConfig(callback.num_samples, callback.num_classes, **_config_kwargs(tracker_kwargs))
        self.trajectory_len = config.trajectory_len

    def _tracker(self):
        tracker = self._callback.tracker
        if tracker is None:
            raise RuntimeError(
                "PruningSampler: the callback has no tracker yet (the sampler's epochs start when training starts)"
            )
        return tracker

    @property
    def process_group(self):
        tracker = self._callback.tracker
        return default_group() if tracker is None else tracker.process_group

    @property
    def complete(self) -> bool:
        return bool(self._tracker().complete)

    @property
    def epoch(self) -> int:
        return int(self._tracker().epoch)

    def scores(self):
        return self._tracker().scores()


def _config_kwargs(tracker_kwargs: dict) -> dict:
    return {k: tracker_kwargs[k] for k in ("window", "decay", "trajectory_len") if k in tracker_kwargs}


def check_options(pruning) -> dict:
    """`pruning`: PruningSampler's keyword arguments besides the tracker, as a dict."""
    if not isinstance(pruning, dict) or "prune_fraction" not in pruning:
        raise TypeError(
            "pruning: expected a dict of PruningSampler's arguments with 'prune_fraction', e.g. "
            f"dict(prune_fraction=0.5, strategy='top'), got {pruning!r}"
        )
    return dict(pruning)


def make_sampler(callback, tracker_kwargs: dict, pruning: dict, **overrides) -> PruningSampler:
    """A PruningSampler over `callback`'s tracker with the `pruning` options (`overrides` win)."""
    return PruningSampler(CallbackTracker(callback, tracker_kwargs), **{**pruning, **overrides})
