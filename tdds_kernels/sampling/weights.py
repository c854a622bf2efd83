"""Per-sample loss weights by dataset index, the PruningSampler's optional companion.

    weights = tk.PruningWeights(sampler, "importance")      # or "inverse_keep"; None: all ones
    loss = (F.cross_entropy(logits, y, reduction="none") * weights(idx)).mean()

Every weight is 1 before the switch (and for kind=None, the default). After it:

- "importance": the release's score weights (``tk.importance_weights``: scores min–max scaled to
  [0, 1]). The release scales each batch's mean loss by the batch's mean weight:
  ``loss = F.cross_entropy(logits, y) * weights(idx).mean()``.
- "inverse_keep": 1 / (the share of its group that was kept), a Horvitz–Thompson weight: the
  group is the sample's class when labels are known (the sampler's or given here), else the
  whole dataset. With ``normalize=True`` (the default) the weights average 1 over the kept set,
  so a class the selection thinned counts as much as it did in the full data and the loss
  keeps its scale; ``normalize=False`` gives 1/p itself (N/k on average, an estimate of the
  full data's summed loss). Pruned samples weigh 0 (the sampler never yields them).
"""

from __future__ import annotations

import torch

from ..core.selection import importance_weights

WEIGHTINGS = (None, "importance", "inverse_keep")


class PruningWeights:
    def __init__(self, sampler, kind: str | None = None, labels=None, normalize: bool = True):
        if kind not in WEIGHTINGS:
            raise ValueError(f"kind: expected one of {WEIGHTINGS}, got {kind!r}")
        n = sampler.num_samples
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(f"labels: expected integer class labels of shape ({n},), got {tuple(labels.shape)}")
            labels = labels.to("cpu", torch.int64)
        self.sampler, self.kind, self.normalize = sampler, kind, bool(normalize)
        self.labels = labels if labels is not None else sampler.labels
        self._table, self._from = None, None

    def table(self) -> torch.Tensor:
        """(N,) float32 weights by dataset index (CPU), for the sampler's current state."""
        kept = self.sampler.kept
        if self.kind is None or kept is None or not self.sampler.pruned(self.sampler.epoch):
            return torch.ones(self.sampler.num_samples)
        if self._from is not kept:  # the kept set changed (chosen, or loaded from a checkpoint)
            self._table, self._from = self._make(kept), kept
        return self._table

    def _make(self, kept: torch.Tensor) -> torch.Tensor:
        n = self.sampler.num_samples
        if self.kind == "importance":
            return importance_weights(self.sampler.scores)
        groups = self.labels if self.labels is not None else torch.zeros(n, dtype=torch.int64)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[kept] = True
        size = torch.bincount(groups, minlength=int(groups.max()) + 1).double()
        kept_size = torch.bincount(groups[mask], minlength=size.numel()).double()
        # A group with members kept has p = kept/size > 0; pruned samples keep weight 0.
        p = kept_size[groups] / size[groups]
        w = torch.where(mask, 1.0 / p.clamp(min=1e-300), torch.zeros_like(p))
        if self.normalize:
            w = w * kept.numel() / w.sum()
        return w.float()

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """Weights (B,) float32 of the batch's dataset indices, on the indices' device."""
        index = torch.as_tensor(index)
        return self.table().to(index.device)[index.long()]
