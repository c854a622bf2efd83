"""Dataset wrapper that hands the dataset index to the training loop."""
from __future__ import annotations

from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so item i is ``(*sample, i)``; a non-tuple sample becomes ``(sample, i)``.

    The default collate then yields batches ``(x, y, idx)``: pass ``idx`` to ``TDDSTracker.update``.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        sample = self.dataset[i]
        if isinstance(sample, tuple):
            return (*sample, i)
        return (sample, i)
