"""From scores to the retraining run: the kept samples as a Subset or a sampler, and the
release's mask / score files written from a tracker.

    kept = tk.select(tracker.scores(), prune_fraction=0.5)
    loader = DataLoader(kept_subset(train_set, kept), batch_size=128, shuffle=True)
    # or, keeping the dataset as it is:
    loader = DataLoader(train_set, batch_size=128, sampler=kept_sampler(kept, seed=0))
    write_release_files(tracker, "out/")   # data_mask_win{W}_ep{T}.npy, score_win{W}_ep{T}.npy, scores.npy

Under DDP every rank selects the same indices from the same (collective) scores; then either
wrap the Subset in a DistributedSampler, or use kept_sampler, which splits the kept set over the
ranks itself (call ``sampler.set_epoch(epoch)`` every epoch in both cases).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.utils.data import Sampler, Subset

from .core.protocol import Tracker, check_tracker
from .offline import release_arrays, write_arrays
from .sampling.kept import KeptSampler


def _kept_list(kept, num_samples: int | None) -> list[int]:
    kept = torch.as_tensor(kept)
    if kept.dim() != 1 or kept.dtype.is_floating_point or kept.dtype == torch.bool:
        raise TypeError(
            f"kept: expected a 1-D tensor of dataset indices (what select() returns), got {kept.dim()}-D {kept.dtype}"
        )
    kept = kept.cpu().to(torch.int64)
    if kept.numel():
        lo, hi = int(kept.min()), int(kept.max())
        if lo < 0 or (num_samples is not None and hi >= num_samples):
            raise ValueError(f"kept: expected indices in [0, {num_samples}), got [{lo}, {hi}]")
        if torch.unique(kept).numel() != kept.numel():
            raise ValueError("kept: expected each dataset index once, got repeats")
    return kept.tolist()


def kept_subset(dataset, kept) -> Subset:
    """``torch.utils.data.Subset`` of the kept samples: `kept` are dataset indices, as from select()."""
    return Subset(dataset, _kept_list(kept, len(dataset)))


def kept_sampler(
    kept,
    shuffle: bool = True,
    seed: int | None = 0,
    num_samples: int | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
    drop_last: bool = False,
) -> Sampler:
    """A sampler over the kept dataset indices, for ``DataLoader(dataset, sampler=...)``: epoch e
    is the kept set shuffled from ``seed + e`` (or in the given order with shuffle=False); call
    ``sampler.set_epoch(epoch)`` before each epoch so a resumed run takes the same batches (an
    iteration without it moves to the next epoch). Under DDP each rank takes its share, as
    DistributedSampler (num_replicas / rank default to the default process group; drop_last).
    seed None draws the base seed from torch's global RNG. `num_samples` (the dataset size),
    when given, range-checks the indices."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    indices = torch.tensor(_kept_list(kept, num_samples), dtype=torch.int64)
    if seed is None:
        seed = int(torch.randint(2**62, ()))
    return KeptSampler(indices, shuffle, seed, num_replicas, rank, drop_last)


def write_release_files(tracker: Tracker, out_dir, allow_incomplete: bool = False) -> list[Path] | None:
    """Write ``data_mask_win{W}_ep{T}.npy``, ``score_win{W}_ep{T}.npy`` and ``scores.npy`` (as the
    offline scorer does) from a tracker, atomically. The tracker must be complete unless
    `allow_incomplete` (then T is the epochs recorded so far). Collective for a sharded tracker:
    call on every rank; rank 0 writes and returns the paths, the others return None."""
    check_tracker(tracker)
    if not tracker.complete and not allow_incomplete:
        raise ValueError(
            f"tracker: expected a complete tracker (trajectory_len={tracker.trajectory_len} "
            f"epochs), got {tracker.epoch} epochs recorded; pass allow_incomplete=True to "
            "write the scores so far"
        )
    with warnings.catch_warnings():  # "not complete": the caller said so with allow_incomplete
        warnings.filterwarnings("ignore", "TDDSTracker.scores: the trajectory is not complete", RuntimeWarning)
        scores = tracker.scores()  # collective when sharded
    if tracker.rank != 0:
        return None
    epochs = tracker.trajectory_len if tracker.complete else tracker.epoch
    arrays = release_arrays(scores, tracker.window, epochs)
    out_dir = Path(out_dir)
    write_arrays(arrays, out_dir)
    return [out_dir / name for name in arrays]
