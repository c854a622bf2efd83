import torch
from torch.utils.data import DataLoader, TensorDataset

import tdds_kernels as tk


def test_indexed_dataset_yields_index_last():
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    ds = tk.IndexedDataset(TensorDataset(x, y))
    assert len(ds) == 10
    xi, yi, i = ds[7]
    assert torch.equal(xi, x[7]) and yi == y[7] and i == 7
    xb, yb, ib = next(iter(DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(xb, x[ib]) and torch.equal(yb, y[ib]) and ib.dtype == torch.int64


def test_indexed_dataset_wraps_plain_samples():
    ds = tk.IndexedDataset([torch.tensor(5.0), torch.tensor(6.0)])
    assert ds[1] == (torch.tensor(6.0), 1)
