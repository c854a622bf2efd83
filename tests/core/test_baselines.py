"""Baseline scores (tdds_kernels.core.baselines) against a dense per-sample restatement written here."""

import math

import numpy as np
import pytest
import torch

from tdds_kernels import TDDSTracker
from tdds_kernels.core.baselines import KEEP_SIGN, NAMES, BaselineScores, keep_scores

from tests.support.helpers import backend_cases


def same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def make_tracker(n, c, backend="reference", device="cpu", **kw):
    return TDDSTracker(n, c, window=3, trajectory_len=None, backend=backend, device=device, on_nonfinite="skip", **kw)


def random_epochs(n, c, epochs, seed):
    """Batches per epoch with missing samples, duplicates (within and across batches), non-finite rows."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    out = []
    for _ in range(epochs):
        idx = torch.randperm(n, generator=g)[: n - int(torch.randint(0, 3, (1,), generator=g))]
        idx = torch.cat([idx, idx[torch.randint(0, len(idx), (4,), generator=g)]])  # duplicates
        idx = idx[torch.randperm(len(idx), generator=g)]
        # Logits that drift toward the label so correctness changes over epochs.
        z = torch.randn(len(idx), c, generator=g) * 2
        z[torch.arange(len(idx)), labels[idx]] += torch.rand(len(idx), generator=g) * 3
        z[torch.rand(len(idx), generator=g) < 0.05, 0] = float("nan")
        out.append([(z[i : i + 7], idx[i : i + 7]) for i in range(0, len(idx), 7)])
    return labels, out


def dense_reference(n, c, labels, epochs, window, el2n_epoch=None):
    """Plain loops: per sample, the first finite row of each epoch, then the paper formulas."""
    rec = [dict() for _ in range(n)]  # epoch -> logits (numpy float64)
    for e, batches in enumerate(epochs):
        for z, idx in batches:
            for row, i in zip(z.double().numpy(), idx.tolist()):
                if np.isfinite(row).all() and e not in rec[i]:
                    rec[i][e] = row
    forgetting, learned, el2n, aum, dyn = [], [], [], [], []
    for i in range(n):
        y = int(labels[i])
        es = sorted(rec[i])
        correct = [int(np.argmax(rec[i][e])) == y for e in es]
        forgetting.append(sum(a and not b for a, b in zip(correct, correct[1:])))
        learned.append(any(correct))
        probs = {}
        for e in es:
            z = rec[i][e]
            p = np.exp(z - z.max())
            probs[e] = p / p.sum()
        target_e = es[-1] if (el2n_epoch is None and es) else el2n_epoch
        if target_e in probs:
            onehot = np.eye(c)[y]
            el2n.append(float(np.sqrt(((probs[target_e] - onehot) ** 2).sum())))
        else:
            el2n.append(math.nan)
        margins = [rec[i][e][y] - max(v for j, v in enumerate(rec[i][e]) if j != y) for e in es]
        aum.append(float(np.mean(margins)) if margins else math.nan)
        stds = []
        for k in range(len(epochs) - window + 1):
            vals = [probs[e][y] for e in range(k, k + window) if e in probs]
            if len(vals) >= 2:
                stds.append(float(np.std(vals)))
        dyn.append(float(np.mean(stds)) if stds else 0.0)
    top = max([f for f, ok in zip(forgetting, learned) if ok], default=0)
    forgetting = [f if ok else top + 1 for f, ok in zip(forgetting, learned)]
    return {
        k: torch.tensor(v, dtype=torch.float32)
        for k, v in (("forgetting", forgetting), ("el2n", el2n), ("aum", aum), ("dyn_unc", dyn))
    }


def feed(tracker, epochs, labels):
    dev = tracker.device
    for batches in epochs:
        for z, idx in batches:
            tracker.update(z.to(dev), idx.to(dev), targets=labels[idx].to(dev))
        tracker.end_epoch()


@pytest.mark.parametrize("pair", backend_cases())
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tracker_baselines_match_dense_reference(seed, pair):
    # Every (backend, device) pair: the row stats come from the backend's own update kernel.
    device, backend = pair
    n, c = 23, 4
    labels, epochs = random_epochs(n, c, 9, seed)
    tracker = make_tracker(n, c, backend, device)
    feed(tracker, epochs, labels)
    got = {k: v.cpu() for k, v in tracker.baseline_scores().items()}
    want = dense_reference(n, c, labels, epochs, window=5)
    assert set(got) == set(NAMES)
    for name in NAMES:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, equal_nan=True, msg=name)


@pytest.mark.parametrize("el2n_epoch", [0, 4, 20])
def test_el2n_at_a_chosen_epoch_and_window(el2n_epoch):
    n, c = 17, 3
    labels, epochs = random_epochs(n, c, 7, seed=5)
    tracker = make_tracker(n, c, baseline_options={"window": 3, "el2n_epoch": el2n_epoch})
    feed(tracker, epochs, labels)
    want = dense_reference(n, c, labels, epochs, window=3, el2n_epoch=el2n_epoch)
    got = tracker.baseline_scores()
    for name in NAMES:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, equal_nan=True)
    if el2n_epoch == 20:
        assert torch.isnan(got["el2n"]).all()


def test_hand_made_sequences():
    # Sample 0: correct, wrong, correct, wrong -> 2 forgetting events. Sample 1: always correct
    # -> 0. Sample 2: never correct -> ranked above all: 2 + 1.
    y = torch.tensor([0, 1, 0])
    good, bad = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    rows = {0: [good, bad, good, bad], 1: [bad, bad, bad, bad], 2: [bad, bad, bad, bad]}
    t = make_tracker(3, 2)
    for e in range(4):
        t.update(torch.cat([rows[i][e] for i in range(3)]), torch.arange(3), targets=y)
        t.end_epoch()
    s = t.baseline_scores()
    assert s["forgetting"].tolist() == [2.0, 0.0, 3.0]
    assert s["aum"].tolist() == [0.0, 2.0, -2.0]  # margins ±2 averaged
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    # Last epoch wrong: p_y = p[1], so ||p - onehot|| = sqrt(2)·(1 − p_y) = sqrt(2)·p[0].
    torch.testing.assert_close(s["el2n"][0], torch.tensor(math.sqrt(2) * float(p[0])))
    # Dyn-Unc with window 5 over 4 epochs: no complete window yet -> 0.
    assert s["dyn_unc"].tolist() == [0.0, 0.0, 0.0]


def test_dyn_unc_windows_by_hand():
    t = make_tracker(1, 2, baseline_options={"window": 2})
    target_probs = [0.5, 0.7, 0.7, 0.1]
    for q in target_probs:
        t.update(torch.tensor([[math.log(q), math.log(1 - q)]]), torch.tensor([0]), targets=torch.tensor([0]))
        t.end_epoch()
    want = np.mean([np.std([0.5, 0.7]), np.std([0.7, 0.7]), np.std([0.7, 0.1])])
    assert t.baseline_scores()["dyn_unc"].item() == pytest.approx(want, abs=1e-6)


def test_fold_skips_rows_without_stats_and_needs_no_selection():
    # Rows with NaN stats (not applied, unusable target) change nothing, including a sample
    # whose only row is a duplicate of one recorded earlier; the spare row N absorbs them.
    b = BaselineScores(3, 2, window=2)
    stats = torch.tensor([[1.0, 0.5, 2.0, 0.9], [float("nan")] * 4, [float("nan")] * 4])
    b.fold(stats, torch.tensor([0, 0, 7]), torch.tensor(0))
    s = b._state
    assert s["count"].tolist() == [1, 0, 0] and s["learned"].tolist() == [True, False, False]
    assert s["margin_sum"].tolist() == [2.0, 0.0, 0.0] and s["el2n"][0] == 0.5
    assert torch.isnan(s["el2n"][1:]).all() and s["prob_ring"][0, 0] == 0.9 and torch.isnan(s["prob_ring"][1:]).all()
    b.fold(torch.tensor([[0.0, 0.8, -1.0, 0.1]]), torch.tensor([0]), torch.tensor(1))
    s = b._state
    assert s["forgetting"].tolist() == [1, 0, 0] and s["count"].tolist() == [2, 0, 0]
    assert s["prob_ring"][0].tolist() == pytest.approx([0.9, 0.1])


@pytest.mark.filterwarnings("ignore:TDDSTracker")  # the forgotten-end_epoch heuristic, on purpose
def test_first_occurrence_in_batch_wins_and_duplicates_ignored():
    t = make_tracker(2, 2)
    y = torch.tensor([0, 0, 0])
    # Sample 0 twice in one batch: the first row (correct, margin 3) counts, the second doesn't.
    t.update(torch.tensor([[3.0, 0.0], [0.0, 5.0], [1.0, 0.0]]), torch.tensor([0, 0, 1]), targets=y)
    t.update(torch.tensor([[0.0, 9.0]]), torch.tensor([0]), targets=y[:1])  # duplicate across batches
    t.end_epoch()
    assert t.baseline_scores()["aum"].tolist() == [3.0, 1.0]


def test_never_recorded_samples():
    t = make_tracker(3, 2)
    t.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), targets=torch.tensor([0]))
    t.end_epoch()
    s = t.baseline_scores()
    assert math.isnan(s["aum"][1]) and math.isnan(s["el2n"][2])
    assert s["forgetting"].tolist() == [0.0, 1.0, 1.0]


def test_keep_scores_sign():
    v = torch.tensor([1.0, -2.0])
    assert keep_scores("aum", v).tolist() == [-1.0, 2.0]
    assert keep_scores("el2n", v).tolist() == [1.0, -2.0]
    assert KEEP_SIGN.keys() == set(NAMES)
    with pytest.raises(ValueError, match="name"):
        keep_scores("tdds", v)


def test_no_targets_no_baselines():
    t = make_tracker(3, 2)
    t.update(torch.zeros(3, 2), torch.arange(3))
    with pytest.raises(RuntimeError, match="targets"):
        t.baseline_scores()


@pytest.mark.parametrize(
    "targets, exc, match",
    [
        (torch.tensor([0, 1]), ValueError, "shape"),
        (torch.tensor([0.0, 1.0, 0.0]), TypeError, "integer"),
        (torch.tensor([0, 2, 0]), ValueError, r"\[0, 2\)"),
        ([0, 1, 0], TypeError, "Tensor"),
    ],
)
def test_bad_targets_raise_and_change_nothing(targets, exc, match):
    t = make_tracker(3, 2)
    t.update(torch.randn(3, 2), torch.arange(3), targets=torch.tensor([0, 1, 0]))
    before = t.state_dict()
    with pytest.raises(exc, match=match):
        t.update(torch.randn(3, 2), torch.arange(3), targets=targets)
    after = t.state_dict()
    for key in ("prev", "seen", "ring", "counters"):
        same(before[key], after[key])
    for key, v in before["baselines"].items():
        if isinstance(v, torch.Tensor):
            same(v, after["baselines"][key])


def test_constructor_validation():
    with pytest.raises(ValueError, match="window"):
        BaselineScores(3, 2, window=1)
    with pytest.raises(ValueError, match="el2n_epoch"):
        BaselineScores(3, 2, el2n_epoch=-1)


def test_checkpoint_round_trip(tmp_path):
    n, c = 11, 3
    labels, epochs = random_epochs(n, c, 8, seed=3)
    full = make_tracker(n, c)
    feed(full, epochs, labels)
    half = make_tracker(n, c)
    feed(half, epochs[:4], labels)
    half.save(tmp_path / "t.pt")
    resumed = TDDSTracker.load(tmp_path / "t.pt", backend="reference")
    feed(resumed, epochs[4:], labels)
    for name in NAMES:
        torch.testing.assert_close(
            resumed.baseline_scores()[name], full.baseline_scores()[name], equal_nan=True, rtol=0, atol=0
        )


def test_load_state_dict_validates_before_changing():
    b = BaselineScores(5, 3, window=3, el2n_epoch=2)
    b.fold(torch.rand(5, 4).round(), torch.arange(5), 2)
    sd = b.state_dict()
    other = BaselineScores(5, 3)
    other.load_state_dict(sd)  # window / el2n_epoch come from the state dict
    assert (other.window, other.el2n_epoch) == (3, 2)
    for k, v in other.state_dict().items():
        if isinstance(v, torch.Tensor):
            same(v, sd[k])
        else:
            assert v == sd[k], k
    fresh = BaselineScores(5, 3)
    before = fresh.state_dict()
    bad = dict(sd, aum=None, margin_sum=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="margin_sum"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match="num_samples"):
        BaselineScores(6, 3).load_state_dict(sd)
    with pytest.raises(ValueError, match="version"):
        fresh.load_state_dict({"format": "x"})
    after = fresh.state_dict()
    for k, v in before.items():
        if isinstance(v, torch.Tensor):
            same(v, after[k])
    assert fresh.window == 5


def test_tracker_baseline_options_reach_the_baselines(tmp_path):
    import tdds_kernels as tk

    tr = tk.TDDSTracker(
        6, 3, window=3, trajectory_len=None, backend="reference", baseline_options={"window": 3, "el2n_epoch": 1}
    )
    for _ in range(3):
        tr.update(torch.randn(6, 3), torch.arange(6), torch.arange(6) % 3)
        tr.end_epoch()
    assert tr._baselines.window == 3 and tr._baselines.el2n_epoch == 1
    tr.save(tmp_path / "t.pt")
    back = tk.TDDSTracker.load(tmp_path / "t.pt")
    for name, values in tr.baseline_scores().items():
        torch.testing.assert_close(back.baseline_scores()[name], values, equal_nan=True)
    with pytest.raises(ValueError, match="window"):
        tk.TDDSTracker(6, 3, window=2, baseline_options={"window": 1})
