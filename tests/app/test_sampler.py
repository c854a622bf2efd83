"""PruningSampler on one process: the order before and after the switch, the schedule helpers,
bad settings, checkpoints (a resumed run takes the uninterrupted run's batches, scores and kept
set) and the weights companion. Two ranks on gloo: test_sampler_ranks.py."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import tdds_kernels as tk
from tdds_kernels.core.selection import importance_weights, select_coreset

N, C, W, T = 50, 4, 3, 4


def tracker(n=N, t=T):
    return tk.TDDSTracker(n, C, window=W, trajectory_len=t, backend="reference")


def labels(n=N):
    return torch.arange(n) % C


def feed_epoch(tr, indices, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.as_tensor(indices)
    tr.update(torch.randn(len(idx), C, generator=g), idx)
    tr.end_epoch()


def complete(tr, t=T):
    for e in range(t):
        feed_epoch(tr, torch.randperm(tr.num_samples), e)
    return tr


# ---------------------------------------------------------------- order
@pytest.mark.parametrize("replicas,drop_last", [(1, False), (3, False), (3, True)])
def test_before_the_switch_the_order_is_distributed_samplers(replicas, drop_last):
    ds = TensorDataset(torch.zeros(N))
    for rank in range(replicas):
        s = tk.PruningSampler(tracker(), 0.5, seed=7, num_replicas=replicas, rank=rank, drop_last=drop_last)
        ref = DistributedSampler(ds, num_replicas=replicas, rank=rank, seed=7, drop_last=drop_last)
        for epoch in range(T):
            s.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(s) == list(ref) and len(s) == len(ref)


@pytest.mark.parametrize("strategy", ["top", "class_balanced", "ccs", "random"])
def test_after_the_switch_only_the_kept_set_reshuffled(strategy):
    tr = complete(tracker())
    s = tk.PruningSampler(tr, 0.6, strategy=strategy, labels=labels(), seed=3)
    s.set_epoch(T)
    expected = select_coreset(strategy, tr.scores(), labels(), prune_fraction=0.6, seed=3)
    assert torch.equal(s.kept, expected) and len(expected) == N - int(0.6 * N)
    orders = []
    for epoch in (T, T + 1):
        s.set_epoch(epoch)
        orders.append(list(s))
        assert sorted(orders[-1]) == expected.tolist() and len(s) == len(expected)
    assert orders[0] != orders[1]


def test_ranks_split_the_kept_set_with_equal_lengths():
    tr = complete(tracker(n=53))
    per_rank = []
    for rank in range(3):
        s = tk.PruningSampler(tr, 0.5, num_replicas=3, rank=rank)
        s.set_epoch(T + 2)
        per_rank.append(list(s))
    kept = s.kept.tolist()
    assert {len(p) for p in per_rank} == {-(-len(kept) // 3)}  # padded up, like DistributedSampler
    assert sorted(set(sum(per_rank, []))) == kept


@pytest.mark.parametrize("mode", ["repeat", "replacement"])
def test_constant_epoch_length(mode):
    tr = complete(tracker())
    s = tk.PruningSampler(tr, 0.7, epoch_length=mode)
    s.set_epoch(T)
    got = torch.tensor(list(s))
    assert len(got) == len(s) == N and set(got.tolist()) <= set(s.kept.tolist())
    counts = torch.bincount(got, minlength=N)[s.kept]
    if mode == "repeat":  # every kept sample floor(N/k) or ceil(N/k) times
        k = len(s.kept)
        assert int(counts.min()) == N // k and int(counts.max()) == -(-N // k)


@pytest.mark.parametrize("mode,drop_last", [("pruned", False), ("pruned", True), ("repeat", False)])
def test_schedule_counts_the_batches_a_loader_makes(mode, drop_last):
    tr = tracker()
    s = tk.PruningSampler(tr, 0.5, epoch_length=mode)
    loader = DataLoader(tk.IndexedDataset(TensorDataset(torch.zeros(N))), batch_size=8, sampler=s, drop_last=drop_last)
    epochs, per_epoch = T + 3, []
    for epoch in range(epochs):
        s.set_epoch(epoch)
        assert len(loader) == s.steps_per_epoch(epoch, 8, drop_last)
        per_epoch.append(sum(1 for _ in loader))
        feed_epoch(tr, torch.arange(N), epoch)
    sched = s.schedule(epochs, 8, drop_last=drop_last)
    assert per_epoch == [sched.steps_before] * T + [sched.steps_after] * 3
    assert sched.total_steps == sum(per_epoch) and sched.switch_epoch == T
    assert (sched.steps_after < sched.steps_before) == (mode == "pruned")


# ---------------------------------------------------------------- bad settings
@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_prune_fraction_outside_the_open_interval(fraction):
    with pytest.raises(ValueError, match=r"^prune_fraction: expected a fraction in \(0, 1\)"):
        tk.PruningSampler(tracker(), fraction)


@pytest.mark.parametrize(
    "kwargs,kind,text",
    [
        (dict(strategy="class_balanced"), ValueError, "^labels: strategy 'class_balanced' needs"),
        (dict(labels=torch.zeros(N - 1, dtype=torch.int64)), ValueError, "^labels: expected integer"),
        (dict(dataset=list(range(N + 1))), ValueError, "^dataset: expected 50 samples to match tracker.num_samples"),
        (dict(strategy="best"), ValueError, "^strategy: expected one of"),
        (dict(epoch_length="same"), ValueError, "^epoch_length: expected one of"),
        (dict(strategy="ccs", strategy_options={"hard_cut": 2.0}), ValueError, "^hard_cut"),
        (dict(rank=2, num_replicas=2), ValueError, r"^rank: expected an int in \[0, 2\)"),
        (dict(seed=1.5), TypeError, "^seed: expected an int"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, kind, text):
    with pytest.raises(kind, match=text) as info:
        tk.PruningSampler(tracker(), 0.5, **kwargs)
    assert "\n" not in str(info.value)


def test_a_tracker_that_never_completes_or_lags():
    with pytest.raises(ValueError, match="^tracker: expected a trajectory_len"):
        tk.PruningSampler(tk.TDDSTracker(N, C, trajectory_len=None, backend="reference"), 0.5)
    tr = tracker()
    s = tk.PruningSampler(tr, 0.5)
    for epoch in range(T - 1):  # the loop forgets one end_epoch
        feed_epoch(tr, torch.arange(N), epoch)
    with pytest.raises(RuntimeError, match=r"^tracker: epoch 4 comes after the trajectory .* closed 3 epochs"):
        s.set_epoch(T)
    assert s.kept is None
    complete(tr := tracker())
    with pytest.raises(RuntimeError, match="^epoch: the tracker completed"):
        tk.PruningSampler(tr, 0.5).set_epoch(1)


def test_set_epoch_never_called_under_ddp_warns_once_and_the_epoch_still_advances():
    s = tk.PruningSampler(tracker(), 0.5, num_replicas=2, rank=0)
    first = list(s)
    with pytest.warns(UserWarning, match="^set_epoch: never called with num_replicas=2"):
        second = list(s)
    assert s.epoch == 1 and first != second
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(s)  # once only
    one = tk.PruningSampler(tracker(), 0.5)  # one process: no warning, epochs still advance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(one) != list(one) and one.epoch == 1


def test_tiny_fraction_of_a_small_dataset_warns():
    with pytest.warns(RuntimeWarning, match="^prune_fraction: 0.01 of 50 samples prunes none"):
        tk.PruningSampler(tracker(), 0.01)


# ---------------------------------------------------------------- checkpoints
def _run(epochs, strategy, stop=None, resume=None, workers_done=None):
    """A training loop with the sampler: the batches it took, the scores and kept set, and a
    checkpoint taken after `stop` = (epoch, batches done in it; -1: after end_epoch)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 6, generator=g), torch.randint(0, C, (N,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, C)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tr = tracker()
    s = tk.PruningSampler(tr, 0.5, strategy=strategy, labels=y, seed=5)
    loader = DataLoader(tk.IndexedDataset(TensorDataset(x, y)), batch_size=8, sampler=s)
    start, taken = 0, []
    if resume is not None:
        ck = torch.load(io.BytesIO(resume), weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        tr.load_state_dict(ck["tracker"])
        s.load_state_dict(ck["sampler"])
        start = ck["epoch"]
    for epoch in range(start, epochs):
        s.set_epoch(epoch)
        for step, (xb, yb, idx) in enumerate(loader):
            taken.append(idx.tolist())
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tr.update(logits.detach(), idx)
            if stop == (epoch, step + 1):
                return taken, _checkpoint(model, opt, tr, s, epoch)
        tr.end_epoch()
        if stop == (epoch, -1):
            return taken, _checkpoint(model, opt, tr, s, epoch + 1)
    return taken, (tr.scores(), s.kept)


def _checkpoint(model, opt, tr, s, epoch):
    buf = io.BytesIO()
    sd = {"model": model.state_dict(), "opt": opt.state_dict(), "tracker": tr.state_dict(), "sampler": s.state_dict()}
    torch.save({**sd, "epoch": epoch}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("strategy", ["top", "ccs"])
# (epoch, batches done in it; -1: after end_epoch): mid-epoch, after an epoch's last batch (the
# loop resumes that epoch, which then yields nothing) and at epoch ends, before and after the switch.
@pytest.mark.parametrize("stop", [(1, 3), (1, 7), (T - 1, -1), (T, 2), (T, 4), (T + 1, -1)], ids=str)
def test_a_resumed_run_takes_the_same_batches_scores_and_kept_set(strategy, stop):
    epochs = T + 3
    full, (scores, kept) = _run(epochs, strategy)
    first, ck = _run(epochs, strategy, stop=stop)
    rest, (scores2, kept2) = _run(epochs, strategy, resume=ck)
    assert first + rest == full
    assert torch.equal(scores, scores2) and torch.equal(kept, kept2)
    assert len(full[-1]) <= 8 and sum(len(b) for b in full[-3:]) < N  # the last epochs are pruned


def test_samples_done_overrides_the_position_a_fetching_loader_ran_ahead_to():
    s = tk.PruningSampler(tracker(), 0.5)
    it = iter(s)
    for _ in range(20):  # a loader with workers has fetched 20 indices ...
        next(it)
    sd = s.state_dict(samples_done=8)  # ... and trained on one batch of 8
    resumed = tk.PruningSampler(tracker(), 0.5)
    resumed.load_state_dict(sd)
    assert list(resumed) == list(s.epoch_indices(0))[8:]
    with pytest.raises(ValueError, match="^samples_done: expected at most 50"):
        s.state_dict(samples_done=51)


def _sd_after_switch():
    s = tk.PruningSampler(complete(tracker()), 0.5)
    s.set_epoch(T)
    it = iter(s)
    next(it)
    return s.state_dict()


@pytest.mark.parametrize(
    "change,text",
    [
        (dict(strategy="ccs"), r"^state_dict\['strategy'\]: expected this sampler's 'top'"),
        (dict(drop_last=True), r"^state_dict\['drop_last'\]: expected this sampler's False"),
        (dict(kept=torch.arange(3)), r"^state_dict\['kept'\]: expected an int64 tensor of shape \(25,\)"),
        (dict(kept=torch.arange(25).flip(0)), r"^state_dict\['kept'\]: expected ascending distinct"),
        (dict(kept=None, scores=None), r"^state_dict\['kept'\]: expected the kept set"),
        (dict(num_replicas=2), r"^state_dict\['num_replicas'\]: a mid-epoch state of 2 ranks"),
        (dict(position=26), r"^state_dict\['position'\]: expected at most 25"),
        (dict(format="x"), r"^state_dict\['format'\]"),
    ],
)
def test_bad_state_dicts_change_nothing(change, text):
    sd = {**_sd_after_switch(), **change}
    s = tk.PruningSampler(tracker(), 0.5, seed=9)
    before = (s.epoch, s.seed, s.kept, list(s.epoch_indices(0)))
    with pytest.raises(ValueError, match=text):
        s.load_state_dict(sd)
    assert (s.epoch, s.seed, s.kept, list(s.epoch_indices(0))) == before


def test_an_epoch_end_state_resumes_at_another_world_size():
    s = tk.PruningSampler(complete(tracker()), 0.5)
    s.set_epoch(T)
    list(s)
    sd = s.state_dict()
    assert sd["finished"]
    other = tk.PruningSampler(complete(tracker()), 0.5, num_replicas=2, rank=1)
    other.load_state_dict(sd)
    other.set_epoch(T + 1)
    assert torch.equal(other.kept, s.kept) and len(list(other)) == len(s.kept) // 2 + len(s.kept) % 2


# ---------------------------------------------------------------- weights
def test_weights_are_ones_until_the_switch_then_by_kind():
    tr = tracker()
    y = torch.cat([torch.zeros(40), torch.ones(10)]).long()
    s = tk.PruningSampler(tr, 0.5, labels=y)
    kinds = {k: tk.PruningWeights(s, k) for k in (None, "importance", "inverse_keep")}
    raw = tk.PruningWeights(s, "inverse_keep", normalize=False)
    idx = torch.arange(N)
    for w in (*kinds.values(), raw):
        assert torch.equal(w(idx), torch.ones(N))
    complete(tr)
    s.set_epoch(T)
    kept = s.kept
    assert torch.equal(kinds[None](idx), torch.ones(N))
    assert torch.equal(kinds["importance"](kept), importance_weights(tr.scores())[kept])
    inv, plain = kinds["inverse_keep"](idx), raw(idx)
    assert bool((inv[kept] > 0).all()) and int((inv > 0).sum()) == len(kept)  # pruned ones weigh 0
    torch.testing.assert_close(inv[kept].mean(), torch.tensor(1.0))
    # Each class's summed weight is its share of the full data (times k): the class mix restored.
    for c, n_c in ((0, 40), (1, 10)):
        torch.testing.assert_close(inv[kept][y[kept] == c].sum(), torch.tensor(len(kept) * n_c / N))
        in_c = kept[y[kept] == c]
        if len(in_c):
            torch.testing.assert_close(plain[in_c], torch.full((len(in_c),), n_c / len(in_c)))
    with pytest.raises(ValueError, match="^kind: expected one of"):
        tk.PruningWeights(s, "loss")
