"""Notice a resumed run that replays an earlier epoch's sample order.

Some trainers restore a run without restoring its data order: Lightning does not restore the
RNG a ``shuffle=True`` DataLoader draws from, and with worker processes it restarts the
sampler's epoch count, so the first epochs after a resume repeat the first epochs' orders. The
tracker still records what it is fed, but the run is no longer the uninterrupted one. The
callback cannot fix the loader; it can notice: it keeps a fingerprint of each epoch's first
batches (a hash of their dataset indices, summed on the device and read once per epoch) in its
checkpoint, and warns when the first epoch after a resume repeats an earlier epoch's.
"""

from __future__ import annotations

import torch

FIRST_BATCHES = 2  # batches of each epoch that go into its fingerprint


class EpochOrders:
    def __init__(self):
        self.fingerprints: list[int | None] = []  # one per closed epoch
        self._sum: torch.Tensor | None = None  # the open epoch's, on the index's device
        self._resumed = False

    def record(self, batch_idx: int, index: torch.Tensor) -> None:
        if batch_idx >= FIRST_BATCHES or index.numel() == 0:
            return
        index = index.detach().reshape(-1).to(torch.int64)
        # Odd multipliers by position (Knuth's), so an order and its permutations differ; int64
        # products wrap, which a hash may do.
        pos = torch.arange(index.numel(), device=index.device, dtype=torch.int64) + batch_idx * index.numel()
        h = ((index + 1) * (pos * 2654435761 + 40503) * 2 + 1).sum()
        self._sum = h if self._sum is None else self._sum * 31 + h

    def end_epoch(self, epoch: int, sequential: bool) -> str | None:
        """Close `epoch`; a warning message when it is the first after a resume and repeats an
        earlier epoch's order (never for a loader that does not shuffle: `sequential`)."""
        fp = None if self._sum is None else int(self._sum.item())
        earlier, check = list(self.fingerprints), self._resumed
        self.fingerprints.append(fp)
        self._sum, self._resumed = None, False
        if not check or fp is None or fp not in earlier or sequential:
            return None
        known = [f for f in earlier if f is not None]
        if len(known) > 1 and len(set(known)) == 1:  # every epoch has had this order: no shuffling
            return None
        first = earlier.index(fp)
        return (
            f"TDDSCallback: epoch {epoch}, the first after the resume, starts with the same batches as "
            f"epoch {first}: the train loader replayed an earlier epoch's order (Lightning restores neither "
            "the RNG of a DataLoader with shuffle=True nor, with num_workers > 0, the sampler's epoch), so "
            "the run and its scores differ from an uninterrupted one. For exact resumes use a sampler with "
            "set_epoch (DistributedSampler, tk.PruningSampler) and num_workers=0 (docs/trainers.md)"
        )

    def state_dict(self) -> list[int | None]:
        return list(self.fingerprints)

    def load_state_dict(self, fingerprints) -> None:
        self.fingerprints, self._sum, self._resumed = list(fingerprints or []), None, True
