"""From scores to retraining: kept_subset / kept_sampler, and the release files from a tracker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tdds_kernels as tk
from tdds_kernels import cli
from tdds_kernels.retrain import kept_sampler, kept_subset, release_arrays, write_release_files

from tests.support.paths import FIXTURES


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="fixtures not found")
def test_release_files_from_a_tracker_equal_the_offline_scorers(tmp_path):
    src = FIXTURES / "small_c10"
    assert (
        cli.main(
            ["score", str(src), "-T", "12", "-W", "5", "-b", "0.9", "--out", str(tmp_path / "cli"), "--no-progress"]
        )
        == 0
    )
    tracker = tk.TDDSTracker(1000, 10, window=5, decay=0.9, trajectory_len=12)
    for t in range(12):
        out, idx = np.load(src / f"{t}_Output.npy"), np.load(src / f"{t}_Index.npy")
        for rows in np.array_split(np.arange(len(idx)), 7):  # batches, as a training loop feeds them
            tracker.update(
                torch.from_numpy(np.ascontiguousarray(out[rows], dtype=np.float32)),
                torch.from_numpy(idx[rows].astype(np.int64)),
            )
        tracker.end_epoch()
    paths = write_release_files(tracker, tmp_path / "online")
    assert sorted(p.name for p in paths) == ["data_mask_win5_ep12.npy", "score_win5_ep12.npy", "scores.npy"]
    for p in paths:
        mine, theirs = np.load(p), np.load(tmp_path / "cli" / p.name)
        assert mine.dtype == theirs.dtype, p.name
        np.testing.assert_array_equal(mine, theirs, err_msg=p.name)
    np.testing.assert_allclose(np.load(paths[2]), np.load(src / "expected_scores.npy"), rtol=1e-5, atol=2e-6)


def test_incomplete_tracker_needs_allow_incomplete(tmp_path):
    tracker = tk.TDDSTracker(4, 3, window=3, trajectory_len=5)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        tracker.update(torch.randn(4, 3, generator=g), torch.arange(4))
        tracker.end_epoch()
    with pytest.raises(ValueError, match="tracker: expected a complete tracker .*got 3 epochs"):
        write_release_files(tracker, tmp_path)
    assert not any(tmp_path.iterdir())
    paths = write_release_files(tracker, tmp_path, allow_incomplete=True)
    assert {p.name for p in paths} == {"data_mask_win3_ep3.npy", "score_win3_ep3.npy", "scores.npy"}
    mask, scores = np.load(paths[0]), tracker.scores().numpy()
    np.testing.assert_array_equal(np.load(paths[1]), scores[mask])
    assert np.all(np.diff(scores[mask]) >= 0)


def test_release_arrays_rejects_non_scores():
    with pytest.raises(TypeError, match="scores: expected a 1-D float tensor"):
        release_arrays(torch.arange(4), 2, 3)


def dataset(n=20):
    return TensorDataset(torch.arange(n) * 10, torch.arange(n) % 3)


def test_kept_subset_holds_exactly_the_selected_samples():
    scores = torch.rand(20, generator=torch.Generator().manual_seed(1))
    kept = tk.select(scores, keep_fraction=0.3)
    sub = kept_subset(dataset(), kept)
    assert len(sub) == len(kept) == 6
    xs = torch.cat([x for x, _ in DataLoader(sub, batch_size=4)])
    assert torch.equal(xs, kept * 10)
    assert set(kept.tolist()) == set(torch.argsort(scores, descending=True)[:6].tolist())


def test_kept_sampler_shuffles_within_the_kept_set():
    kept = torch.tensor([3, 7, 11, 0, 19])
    s = kept_sampler(kept, seed=0, num_samples=20)
    first, second = list(s), list(s)
    assert sorted(first) == sorted(second) == sorted(kept.tolist()) and len(s) == 5
    assert first == list(kept_sampler(kept, seed=0))  # the same seed, the same epochs
    orders = {tuple(s) for _ in range(10)}
    assert len(orders) > 1  # a new order each epoch
    assert list(kept_sampler(kept, shuffle=False)) == kept.tolist()
    xs = torch.cat([x for x, _ in DataLoader(dataset(), batch_size=2, sampler=kept_sampler(kept, shuffle=False))])
    assert torch.equal(xs, kept * 10)


@pytest.mark.parametrize(
    "kept, kind, text",
    [
        (torch.tensor([0.5, 1.0]), TypeError, "kept: expected a 1-D tensor of dataset indices"),
        (torch.tensor([[1, 2]]), TypeError, "kept: expected a 1-D tensor"),
        (torch.tensor([1, 20]), ValueError, r"kept: expected indices in \[0, 20\), got \[1, 20\]"),
        (torch.tensor([-1, 2]), ValueError, r"kept: expected indices in \[0, 20\)"),
        (torch.tensor([2, 2]), ValueError, "kept: expected each dataset index once"),
    ],
)
def test_bad_kept_indices_raise(kept, kind, text):
    with pytest.raises(kind, match=text):
        kept_subset(dataset(), kept)
    with pytest.raises(kind, match=text):
        kept_sampler(kept, num_samples=20)


def test_kept_sampler_set_epoch_reproduces_an_epoch_and_splits_over_ranks():
    kept = torch.tensor([3, 7, 11, 0, 19, 5, 8])
    run = kept_sampler(kept, seed=4)
    epochs = []
    for e in range(3):
        run.set_epoch(e)
        epochs.append(list(run))
    assert len({tuple(o) for o in epochs}) > 1 and all(sorted(o) == sorted(kept.tolist()) for o in epochs)
    resumed = kept_sampler(kept, seed=4)
    resumed.set_epoch(2)  # a run resumed at epoch 2 takes epoch 2's order
    assert list(resumed) == epochs[2]
    # Two ranks: equal lengths, together the epoch's order (the first index repeated as padding).
    ranks = [kept_sampler(kept, seed=4, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == len(ranks[0]) == 4
    assert [x for pair in zip(a, b) for x in pair] == epochs[1] + epochs[1][:1]
    trimmed = kept_sampler(kept, seed=4, num_replicas=2, rank=1, drop_last=True)
    assert len(list(trimmed)) == len(trimmed) == 3
    with pytest.raises(ValueError, match=r"rank: expected an int in \[0, 2\)"):
        kept_sampler(kept, num_replicas=2, rank=2)
