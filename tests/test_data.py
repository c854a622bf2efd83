import pytest
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


def test_indexed_dataset_lists_become_tuples_with_the_index():
    x, y = torch.randn(6, 2), torch.arange(6)
    ds = tk.IndexedDataset([[x[i], y[i]] for i in range(6)])
    xi, yi, i = ds[4]
    assert torch.equal(xi, x[4]) and yi == 4 and i == 4
    xb, yb, ib = next(iter(DataLoader(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1))))
    assert torch.equal(xb, x[ib]) and torch.equal(yb, y[ib])


def test_indexed_dataset_dicts_gain_an_index_key():
    x = torch.randn(5, 3)
    ds = tk.IndexedDataset([{"input": x[i], "label": i % 2} for i in range(5)])
    item = ds[3]
    assert set(item) == {"input", "label", "index"} and item["index"] == 3 and torch.equal(item["input"], x[3])
    batch = next(iter(DataLoader(ds, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(2))))
    assert torch.equal(batch["input"], x[batch["index"]]) and torch.equal(batch["label"], batch["index"] % 2)
    assert "index" not in ds.dataset[3], "the wrapped sample must not be modified"


def test_indexed_dataset_refuses_to_overwrite_an_index_key():
    ds = tk.IndexedDataset([{"index": 7, "x": 0.0}])
    with pytest.raises(KeyError, match="already has an 'index' key"):
        ds[0]
