"""What each rank feeds in the sharded tracker's tests (test_sharded.py, test_sync_free.py): a
small configuration, per-epoch data split like a DistributedSampler's, and error helpers."""

from __future__ import annotations

import torch

N, C, WINDOW, T = 53, 7, 3, 6
CFG = dict(num_classes=C, window=WINDOW, decay=0.9, trajectory_len=T, backend="reference")


# ---------------------------------------------------------------- data: what each rank sees
def epoch_data(epoch, world, n=N, batch=3):
    """Logits and targets by sample (the same for every rank, as with a replicated model), and
    per step the batch of indices of each rank: a DistributedSampler-like split whose padding
    repeats the head of the permutation, some samples missing, and per-rank batch sizes that
    differ (ranks that run out pass empty batches, so every rank calls update once per step)."""
    g = torch.Generator().manual_seed(1234 + epoch)
    logits = torch.randn(n, C, generator=g) * 3
    targets = torch.randint(0, C, (n,), generator=g)
    perm = torch.randperm(n, generator=g)
    perm = perm[(perm + epoch) % 11 != 0]
    total = -(-len(perm) // world) * world
    padded = torch.cat([perm, perm[: total - len(perm)]])
    chunks = [list(padded[r::world].split(batch + r)) for r in range(world)]
    steps = max(len(c) for c in chunks)
    empty = torch.zeros(0, dtype=torch.int64)
    per_step = [[c[s] if s < len(c) else empty for c in chunks] for s in range(steps)]
    return logits, targets, per_step


def feed(tracker, epoch, world, rank, targets=True, dtype=torch.float32):
    logits, y, steps = epoch_data(epoch, world)
    for step in steps:
        if rank is None:  # the single tracker gets the ranks' batches concatenated in rank order
            idx = torch.cat(step)
        else:
            idx = step[rank]
        tracker.update(logits[idx].to(dtype), idx, y[idx] if targets else None)
    tracker.end_epoch()


def expect_error(fn, kind, text):
    try:
        fn()
    except kind as exc:
        assert text in str(exc), f"{text!r} not in {str(exc)!r}"
        return str(exc)
    raise AssertionError(f"expected {kind.__name__} containing {text!r}")


def single_error(fn):
    try:
        fn()
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    raise AssertionError("the single tracker did not raise")
