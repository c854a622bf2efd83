"""Huge-page advice for the tracker's large host tensors (tdds_kernels/core/huge_pages.py)."""

import os

import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.core import huge_pages

THP = "/sys/kernel/mm/transparent_hugepage/enabled"


@pytest.mark.parametrize("shape,dtype,fill", [((3, 5), torch.float32, float("nan")), ((5000, 2000), torch.float16, 0)])
def test_full_is_torch_full(shape, dtype, fill):
    got = huge_pages.full(shape, fill, dtype, "cpu")
    assert torch.equal(got.nan_to_num(7), torch.full(shape, fill, dtype=dtype).nan_to_num(7))


@pytest.mark.skipif(not os.path.exists(THP), reason="no transparent huge pages in this kernel")
def test_large_tensors_are_advised_and_small_ones_not():
    assert huge_pages.advise(torch.empty(huge_pages.MIN_BYTES // 4))  # the kernel took the advice
    assert not huge_pages.advise(torch.empty(1024))
    assert not huge_pages.advise(torch.empty(huge_pages.MIN_BYTES, dtype=torch.uint8, device="meta"))


def test_tracker_state_asks_for_huge_pages(monkeypatch):
    advised = []
    monkeypatch.setattr(huge_pages, "advise", lambda t: advised.append(t.nbytes) or False)
    tk.TDDSTracker(9000, 1000, backend="reference")  # prev: 36 MB
    assert 9000 * 1000 * 4 in advised
