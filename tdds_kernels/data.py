"""Dataset wrapper that hands the dataset index to the training loop."""

from __future__ import annotations

from collections.abc import Mapping

from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so that item i also carries i, its dataset index.

    - a tuple or list sample ``(x, y)`` / ``[x, y]`` becomes ``(x, y, i)``;
    - a dict (any mapping) sample gains an ``"index"`` key: ``{**sample, "index": i}``;
      a sample that already has an ``"index"`` key is an error rather than silently overwritten;
    - any other sample ``x`` becomes ``(x, i)``.

    The default collate then yields batches ``(x, y, idx)`` (or a dict with ``batch["index"]``):
    pass ``idx`` to ``TDDSTracker.update``.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        sample = self.dataset[i]
        if isinstance(sample, (tuple, list)):
            return (*sample, i)
        if isinstance(sample, Mapping):
            if "index" in sample:
                raise KeyError(
                    f"IndexedDataset: sample {i} already has an 'index' key; expected "
                    "a dict without one (the wrapper adds it)"
                )
            return {**sample, "index": i}
        return (sample, i)
