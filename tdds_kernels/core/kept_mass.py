"""The run-time check of a compressed previous row (prev_topk=K, docs/design.md §2.1): how much
of the softmax mass the K stored classes hold, per epoch.

The compression is exact when a sample's mass lies in its K largest classes and breaks down when
the mass is spread flat over many more (Spearman 0.20-0.31 against full rows at a mean kept mass
of 9-22%; docs/performance.md). The stored logs say which case a run is in at no extra cost: at
end_epoch the mean of Σ_j exp(prev_val[n, j]) over the samples recorded in the epoch is the mean
kept mass, reported in tracker.stats["kept_mass"], with a RuntimeWarning below KEPT_MASS_WARN.
"""

from __future__ import annotations

import warnings

import torch

from ..ops.schema import EPS

# Below this mean kept mass the ranking is not to be trusted (docs/performance.md: 96-99% ranked
# like full rows, Spearman >= 0.999; 9-48% from 0.43 down to 0.20).
KEPT_MASS_WARN = 0.5


class KeptMass:
    """The mean kept mass of the last epoch closed by this object (None before one, after a
    resume until the next end_epoch, and for an epoch that recorded nothing)."""

    def __init__(self, k: int, threshold: float = KEPT_MASS_WARN):
        self.k = k
        self.threshold = threshold
        self.last: float | None = None
        self.count = 0  # samples the last measure averaged over (a sharded tracker weighs ranks by it)

    def weighted(self) -> torch.Tensor:
        """[mass sum, samples] of the last epoch: what a sharded tracker sums over its ranks."""
        return torch.tensor([(self.last or 0.0) * self.count, self.count], dtype=torch.float64)

    @staticmethod
    def mean_of(rows: torch.Tensor) -> float | None:
        """The mean kept mass of several weighted() rows (None when none recorded a sample)."""
        mass, count = rows.sum(dim=0).tolist()
        return mass / count if count > 0 else None

    def end_epoch(self, prev_val: torch.Tensor, seen: torch.Tensor, epoch: int) -> float | None:
        """Measure the epoch being closed (its samples have seen == epoch); warn if below the
        threshold. One reduction over the recorded rows' K values and one host sync."""
        rows = max(1, 2**24 // self.k)  # chunks of 16M values: no (N, K) float32 temporary
        total = torch.zeros((), dtype=torch.float64, device=prev_val.device)
        count = torch.zeros((), dtype=torch.int64, device=prev_val.device)
        for start in range(0, prev_val.shape[0], rows):
            recorded = seen[start : start + rows] == epoch
            # log(p + ε) is stored: ε is taken back out of each of the K terms
            mass = prev_val[start : start + rows].float().exp().sum(dim=1, dtype=torch.float64) - self.k * EPS
            total += torch.where(recorded, mass, torch.zeros_like(mass)).sum()
            count += recorded.sum()
        n = int(count)
        self.last, self.count = (float(total) / n if n else None), n
        if self.last is not None and self.last < self.threshold:
            warnings.warn(
                f"TDDSTracker: prev_topk={self.k} kept a mean {self.last:.1%} of the softmax mass in "
                f"epoch {epoch} (below {self.threshold:.0%}): the rows are spread too flat for K = "
                f"{self.k} and the scores may rank close to randomly (docs/performance.md); use a "
                "larger prev_topk or full rows",
                RuntimeWarning,
                stacklevel=4,
            )
        return self.last
