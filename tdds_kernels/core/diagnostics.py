"""The tracker's warnings about a loop that is probably wrong (docs/design.md §3): a forgotten
end_epoch(), an index that holds class labels, an epoch in which nothing was recorded.

They read the tracker's state and never change what it computes; each costs at most one
reduction over `seen`, and only when it is about to warn or once per epoch in end_epoch.
"""

from __future__ import annotations

import warnings

from ..ops.schema import DUPLICATES
from . import host_counters as capture_state  # read at call time (tests replace it)

# The index-looks-like-labels hint: an epoch that recorded only samples below num_classes while
# the dataset is at least this many times larger than the class count.
LABELS_HINT_RATIO = 10


def check_forgotten_end_epoch(st, host_counters) -> None:
    # Runs once per N rows of an epoch: if nearly every row since the last check was a
    # duplicate, the loop most likely forgot end_epoch(). Repeated augmentation spreads its
    # duplicates over the epoch and stays far below the threshold. No sync on CUDA: it reads
    # the newest counters copy that has landed (one check late), see host_counters.
    # `st`: the tracker's TrackerState (its bookkeeping marks live there).
    # Inside a CUDA graph capture it does nothing, next_dup_check included, so the first
    # update after the capture (rows_in_epoch still past the mark) runs the skipped check.
    if capture_state.stream_capturing(st.counters.device):
        return
    n = st.config.num_samples
    st.next_dup_check = (st.rows_in_epoch // n + 1) * n  # the next multiple of N, after any skips
    got = host_counters.take(st.counters, (st.epoch, st.rows_in_epoch))
    rows0, dups0 = st.dup_check_mark
    if got is None or got[0][0] != st.epoch or got[0][1] <= rows0:  # none, or stale
        return
    (_, rows), counters = got
    dups = int(counters[DUPLICATES]) - int(st.epoch_start_counters[DUPLICATES])
    st.dup_check_mark = (rows, dups)
    if dups - dups0 >= 0.9 * (rows - rows0):
        hint = labels_hint(st)
        warnings.warn(
            f"TDDSTracker: {dups - dups0} of the last {rows - rows0} rows "
            f"recorded in epoch {st.epoch} were duplicates of samples already "
            "recorded in it; " + (hint or "did you forget end_epoch()?"),
            RuntimeWarning,
            stacklevel=4,
        )


def labels_hint(st) -> str | None:
    """The hint for an `index` that holds class labels, or None: every sample recorded in the
    open epoch is below num_classes while num_samples is much larger. Called only when a
    warning fires anyway (one reduction over `seen`, a sync on CUDA)."""
    n, c = st.config.num_samples, st.config.num_classes
    if n < LABELS_HINT_RATIO * c or st.labels_warned_epoch == st.epoch:
        return None
    if bool((st.seen[c:] == st.epoch).any()) or not bool((st.seen[:c] == st.epoch).any()):
        return None
    st.labels_warned_epoch = st.epoch
    return (
        f"every index recorded in epoch {st.epoch} is below num_classes ({c}) while "
        f"num_samples is {n}: the index looks like class labels; pass dataset "
        "indices (tdds_kernels.IndexedDataset appends them to each sample)"
    )


def warn_empty_or_labels(st, new: dict) -> None:
    # end_epoch already synced for `new`; these reductions run once per epoch.
    if st.rows_in_epoch == 0 and not any(new.values()) and not bool((st.seen == st.epoch).any()):
        # rows_in_epoch stays 0 under torch.compile (host bookkeeping is skipped there), so
        # `seen` decides whether anything was recorded.
        warnings.warn(
            f"TDDSTracker.end_epoch: nothing was recorded in epoch {st.epoch} (end_epoch() "
            "twice in a row, or update() never called): every sample is counted missing for it",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    hint = labels_hint(st)
    if hint is not None:
        warnings.warn(f"TDDSTracker.end_epoch: {hint}", RuntimeWarning, stacklevel=4)
