"""The run-time check of prev_topk (tdds_kernels/core/kept_mass.py): the mean kept mass per
epoch in tracker.stats, and a warning when the softmax is too flat for K."""

import warnings

import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.core.kept_mass import KEPT_MASS_WARN

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")


def _epoch(tracker, logits, index):
    tracker.update(logits, index)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.end_epoch()
    return [w for w in caught if "prev_topk" in str(w.message)]


def _top_mass(logits, k):
    return torch.softmax(logits.double(), 1).topk(k, dim=1).values.sum(1)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_flat_rows_warn_and_peaked_rows_do_not(backend):
    if backend not in tk.available_backends("cpu"):
        pytest.skip(f"{backend} not built")
    n, c, k = 40, 50, 2
    tr = tk.TDDSTracker(n, c, window=3, prev_topk=k, backend=backend)
    assert tr.stats["kept_mass"] is None  # no epoch closed yet
    index = torch.randperm(n)[:30]  # 10 samples not recorded: left out of the mean
    flat = torch.randn(30, c) * 0.05
    caught = _epoch(tr, flat, index)
    assert tr.stats["kept_mass"] == pytest.approx(_top_mass(flat, k).mean().item(), rel=1e-5)
    assert tr.stats["kept_mass"] < KEPT_MASS_WARN and len(caught) == 1
    assert "prev_topk=2 kept a mean 4." in str(caught[0].message) and caught[0].category is RuntimeWarning
    peaked = torch.randn(30, c)
    peaked[torch.arange(30), torch.randint(0, c, (30,))] += 12.0
    caught = _epoch(tr, peaked, index)
    assert tr.stats["kept_mass"] == pytest.approx(_top_mass(peaked, k).mean().item(), rel=1e-5)
    assert tr.stats["kept_mass"] > 0.99 and not caught


def test_threshold_is_settable_and_full_rows_have_no_statistic():
    tr = tk.TDDSTracker(8, 10, window=3, prev_topk=9)  # K = C − 1: still a compressed row
    tr.kept_mass.threshold = 1.01  # even a complete row is "too flat" now
    caught = _epoch(tr, torch.randn(8, 10), torch.arange(8))
    assert len(caught) == 1 and tr.stats["kept_mass"] <= 1.0
    full = tk.TDDSTracker(8, 10, window=3)
    assert full.kept_mass is None and "kept_mass" not in full.stats


def test_an_epoch_without_records_reports_none():
    tr = tk.TDDSTracker(8, 10, window=3, prev_topk=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr.end_epoch()  # nothing recorded (its own warning); no kept-mass warning
    assert tr.stats["kept_mass"] is None
