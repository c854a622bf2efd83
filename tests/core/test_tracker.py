"""TDDSTracker semantics (docs/design.md §3) on every CPU backend, against a dense restatement."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdds_kernels as tk

from tests.support.dense import dense_scores
from tests.support.helpers import CPU_BACKENDS, assert_same_state, feed, make_tracker, random_epochs, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")


@pytest.mark.filterwarnings("ignore:TDDSTracker. .* duplicates")  # p_dup=1 can look like a forgotten end_epoch
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_matches_dense_formula(backend, data):
    n = data.draw(st.integers(1, 12), label="N")
    c = data.draw(st.integers(1, 6), label="C")
    w = data.draw(st.integers(3, 5), label="W")
    t = data.draw(st.integers(w, w + 4), label="T")
    beta = data.draw(st.floats(0.05, 1.0), label="beta")
    p_missing = data.draw(st.sampled_from([0.0, 0.0, 0.2, 0.6]), label="p_missing")
    p_dup = data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="p_dup")
    p_nonfinite = data.draw(st.sampled_from([0.0, 0.0, 0.2]), label="p_nonfinite")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    epochs = random_epochs(np.random.default_rng(seed), n, c, t, p_missing, p_dup, p_nonfinite)
    tracker = make_tracker(
        backend, num_samples=n, num_classes=c, window=w, decay=beta, trajectory_len=t, on_nonfinite="skip"
    )
    feed(tracker, epochs)
    assert tracker.complete
    expected = torch.from_numpy(dense_scores(epochs, n, w, beta)).float()
    torch.testing.assert_close(tracker.scores(), expected, rtol=1e-4, atol=2e-5)
    # Counters: every non-recorded (sample, epoch) is missing; every extra usable row a duplicate.
    rows = [np.concatenate([i for _, i in b]) for b in epochs]
    finite = [np.concatenate([np.isfinite(l).all(1) for l, _ in b]) for b in epochs]
    recorded = sum(np.unique(r[f]).size for r, f in zip(rows, finite))
    assert tracker.stats["missing"] == n * t - recorded
    assert tracker.stats["nonfinite"] == sum(int((~f).sum()) for f in finite)
    assert tracker.stats["duplicates"] == sum(int(f.sum()) for f in finite) - recorded


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_full_coverage_equals_release_formula(backend):
    # W = T: a single window; β = 1 makes the score that window's R exactly.
    rng = np.random.default_rng(1)
    n, c, t = 9, 5, 4
    epochs = random_epochs(rng, n, c, t)
    tracker = make_tracker(backend, num_samples=n, num_classes=c, window=t, decay=1.0, trajectory_len=t)
    feed(tracker, epochs)
    torch.testing.assert_close(
        tracker.scores(), torch.from_numpy(dense_scores(epochs, n, t, 1.0)).float(), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_duplicates_first_occurrence_counts(backend):
    n, c = 4, 3
    tr = make_tracker(backend, num_samples=n, num_classes=c, window=3, trajectory_len=None)
    ref = make_tracker("reference", num_samples=n, num_classes=c, window=3, trajectory_len=None)
    a, b = torch.randn(n, c), torch.randn(n, c)
    for e in range(2):
        tr.update(a + e, torch.arange(n))
        tr.update(b[:2], torch.tensor([2, 0]))  # samples already recorded this epoch: ignored
        tr.end_epoch()
        ref.update(a + e, torch.arange(n))
        ref.end_epoch()
    got, want = tr.state_dict(), ref.state_dict()
    for k in ("prev", "seen", "ring", "score"):
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, equal_nan=True, msg=k)
    assert tr.stats["duplicates"] == 4 and tr.stats["missing"] == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_in_batch_duplicates_never_mix(backend):
    # Two different rows for sample 0 in one batch: the state must equal one of the two
    # single-row outcomes exactly (the reference applies the first; kernels may apply either).
    c = 6
    rows = torch.randn(2, c) * 3
    prev = torch.randn(1, c)
    outcomes = []
    for keep in (0, 1):
        ref = make_tracker("reference", num_samples=1, num_classes=c, window=3, trajectory_len=None)
        ref.update(prev, torch.tensor([0]))
        ref.end_epoch()
        ref.update(rows[keep : keep + 1], torch.tensor([0]))
        outcomes.append(ref.state_dict())
    tr = make_tracker(backend, num_samples=1, num_classes=c, window=3, trajectory_len=None)
    tr.update(prev, torch.tensor([0]))
    tr.end_epoch()
    tr.update(rows, torch.tensor([0, 0]))
    got = tr.state_dict()
    assert got["counters"][0] == 1
    matches = [
        all(
            torch.equal(got[k], o[k])
            or (got[k].is_floating_point() and torch.allclose(got[k], o[k], rtol=1e-5, atol=1e-6, equal_nan=True))
            for k in ("prev", "seen", "ring")
        )
        for o in outcomes
    ]
    assert any(matches), "in-batch duplicate rows were mixed"
    if backend == "reference":
        assert matches[0], "the reference applies the first occurrence"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_missing_samples_make_undefined_transitions(backend):
    # Sample 1 misses epoch 2: d_1 and d_2 are undefined; window over d_0..d_3 uses d_0, d_3.
    c = 4
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 2, c)).astype(np.float32) * 2
    tr = make_tracker(backend, num_samples=2, num_classes=c, window=5, decay=1.0, trajectory_len=5)
    for e in range(5):
        idx = [0] if e == 2 else [0, 1]
        tr.update(torch.from_numpy(z[e, idx]), torch.tensor(idx))
        tr.end_epoch()
    assert tr.stats["missing"] == 1

    def d(p, q):
        p, q = torch.softmax(torch.from_numpy(p), 0), torch.softmax(torch.from_numpy(q), 0)
        return float((p * (torch.log(p + 1e-8) - torch.log(q + 1e-8))).abs().sum())

    d0, d3 = d(z[1, 1], z[0, 1]), d(z[4, 1], z[3, 1])
    expected = math.sqrt(2) * abs(d0 - d3) / 2  # sqrt of two squared deviations from the mean
    assert tr.scores()[1].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_nonfinite_rows(backend, mode):
    tr = make_tracker(backend, num_samples=3, num_classes=2, window=3, trajectory_len=None, on_nonfinite=mode)
    tr.update(torch.randn(3, 2), torch.arange(3))
    tr.end_epoch()  # a clean epoch first: the check is per epoch
    logits = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [float("-inf"), 0.0]])
    tr.update(logits, torch.tensor([0, 1, 2]))
    assert tr.stats["nonfinite"] == 2
    seen = tr.state_dict()["seen"]
    assert seen.tolist() == [1, 0, 0], "non-finite rows must not be recorded"
    if mode == "error":
        before = snapshot(tr)
        with pytest.raises(ValueError, match="non-finite"):
            tr.end_epoch()
        assert_same_state(before, snapshot(tr))
        tr.on_nonfinite = "skip"
    tr.end_epoch()
    assert tr.epoch == 2 and tr.stats["missing"] == 2


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_softmax_in_fp32(backend, dtype):
    n, c = 6, 5
    rng = np.random.default_rng(4)
    epochs = random_epochs(rng, n, c, 4)
    half = [[(torch.from_numpy(l).to(dtype), i) for l, i in b] for b in epochs]
    as32 = [[(l.float().numpy(), i) for l, i in b] for b in half]  # the same values, in fp32
    tr = make_tracker(backend, num_samples=n, num_classes=c, window=3, decay=0.7, trajectory_len=4)
    feed(tr, half)
    torch.testing.assert_close(
        tr.scores(), torch.from_numpy(dense_scores(as32, n, 3, 0.7)).float(), rtol=1e-4, atol=2e-5
    )


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_storage_dtypes_close_to_fp32(backend, storage):
    n, c = 10, 7
    epochs = random_epochs(np.random.default_rng(5), n, c, 6)
    tr = make_tracker(backend, num_samples=n, num_classes=c, window=3, trajectory_len=6, storage_dtype=storage)
    feed(tr, epochs)
    assert tr.state_dict()["prev"].dtype == storage
    tol = {torch.float32: 2e-5, torch.bfloat16: 0.05, torch.float16: 0.01}[storage]
    torch.testing.assert_close(
        tr.scores(), torch.from_numpy(dense_scores(epochs, n, 3, 0.9)).float(), rtol=tol, atol=tol
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_completion_and_no_trajectory_len(backend):
    epochs = random_epochs(np.random.default_rng(6), 5, 3, 6)
    tr = make_tracker(backend, num_samples=5, num_classes=3, window=3, trajectory_len=3)
    feed(tr, epochs[:3])
    assert tr.complete and tr.epoch == 3
    frozen = snapshot(tr)
    feed(tr, epochs[3:])  # no-ops once complete
    assert_same_state(frozen, snapshot(tr))
    forever = make_tracker(backend, num_samples=5, num_classes=3, window=3, trajectory_len=None)
    feed(forever, epochs)
    assert not forever.complete and forever.epoch == 6
    torch.testing.assert_close(
        forever.scores(), torch.from_numpy(dense_scores(epochs, 5, 3, 0.9)).float(), rtol=1e-4, atol=1e-5
    )


def test_scores_before_any_window_are_zero():
    tr = make_tracker(num_samples=3, num_classes=2, window=3, trajectory_len=5)
    feed(tr, random_epochs(np.random.default_rng(0), 3, 2, 2))
    assert torch.equal(tr.scores(), torch.zeros(3)) and tr.stats["windows"] == 0


# ---------------------------------------------------------------------------- bad input
BAD_UPDATES = [
    (lambda: (torch.randn(4, 3), torch.arange(4)), ValueError, "logits: expected 5 classes"),
    (lambda: (torch.randn(4), torch.arange(4)), ValueError, "logits: expected shape"),
    (lambda: (torch.randn(4, 5).double(), torch.arange(4)), TypeError, "logits: expected dtype"),
    (lambda: (torch.randn(4, 5), torch.arange(3)), ValueError, r"index: expected shape \(4,\)"),
    (lambda: (torch.randn(4, 5), torch.arange(4).float()), TypeError, "index: expected dtype"),
    (lambda: (torch.randn(2, 5), torch.tensor([0, 8])), ValueError, r"index: expected dataset indices in \[0, 8\)"),
    (lambda: (torch.randn(2, 5), torch.tensor([-1, 0])), ValueError, "index: expected dataset indices"),
    (lambda: (torch.randn(2, 5).numpy(), torch.arange(2)), TypeError, "logits: expected a torch.Tensor"),
    (lambda: (torch.randn(2, 5), [0, 1]), TypeError, "index: expected a torch.Tensor"),
    (lambda: (torch.randn(2, 5, device="meta"), torch.arange(2)), ValueError, "logits: expected a tensor on cpu"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("make,exc,match", BAD_UPDATES)
def test_bad_input_raises_and_changes_nothing(backend, make, exc, match):
    tr = make_tracker(backend, num_samples=8, num_classes=5, window=3, trajectory_len=None)
    tr.update(torch.randn(8, 5), torch.arange(8))
    tr.end_epoch()
    tr.update(torch.randn(3, 5), torch.tensor([1, 2, 3]))
    before = snapshot(tr)
    logits, index = make()
    with pytest.raises(exc, match=match):
        tr.update(logits, index)
    assert_same_state(before, snapshot(tr))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(num_samples=0), ValueError, "num_samples"),
        (dict(num_classes=2.0), TypeError, "num_classes"),
        (dict(window=1), ValueError, "window"),
        (dict(window=5, trajectory_len=4), ValueError, "trajectory_len"),
        (dict(decay=0.0), ValueError, "decay"),
        (dict(decay=1.5), ValueError, "decay"),
        (dict(storage_dtype=torch.float64), TypeError, "storage_dtype"),
        (dict(on_nonfinite="ignore"), ValueError, "on_nonfinite"),
        (dict(backend="fastest"), ValueError, "backend"),
        (dict(backend="cuda"), ValueError, "backend: 'cuda' is not available"),
    ],
)
def test_bad_config(kwargs, exc, match):
    cfg = dict(num_samples=4, num_classes=3, window=3, trajectory_len=4) | kwargs
    with pytest.raises(exc, match=match):
        tk.TDDSTracker(**cfg)


def test_out_of_range_skipped_and_counted_by_the_ops():
    # On CUDA the kernels skip and count (the tracker raises at end_epoch); the reference op
    # does the same when called directly, and the tracker's end_epoch reports it.
    tr = make_tracker(num_samples=3, num_classes=2, window=3, trajectory_len=None)
    tr._backend.update(
        torch.randn(3, 2), torch.tensor([0, 5, -2]), tr._state.prev, tr._state.seen, tr._state.ring, tr._state.counters
    )
    assert tr.stats["out_of_range"] == 2 and tr.state_dict()["seen"].tolist() == [0, -1, -1]
    before = snapshot(tr)
    with pytest.raises(ValueError, match="2 rows of epoch 0 had dataset indices outside"):
        tr.end_epoch()
    assert_same_state(before, snapshot(tr))


def test_forgotten_end_epoch_warns():
    tr = make_tracker(num_samples=4, num_classes=2, window=3, trajectory_len=None)
    tr.update(torch.randn(4, 2), torch.arange(4))
    with pytest.warns(RuntimeWarning, match="forget end_epoch"):
        tr.update(torch.randn(4, 2), torch.arange(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr.end_epoch()
        tr.update(torch.randn(4, 2), torch.arange(4))  # a normal epoch does not warn


def test_logits_with_grad_and_noncontiguous_are_accepted():
    tr = make_tracker(num_samples=4, num_classes=3, window=3, trajectory_len=None)
    z = torch.randn(3, 4, requires_grad=True)
    tr.update(z.t(), torch.arange(4, dtype=torch.int32))
    assert tr.state_dict()["seen"].tolist() == [0, 0, 0, 0]


def test_int32_and_int64_index_agree():
    epochs = random_epochs(np.random.default_rng(7), 6, 4, 4)
    a = make_tracker(num_samples=6, num_classes=4, window=3, trajectory_len=4)
    b = make_tracker(num_samples=6, num_classes=4, window=3, trajectory_len=4)
    feed(a, epochs)
    feed(b, [[(l, i.astype(np.int32)) for l, i in e] for e in epochs])
    assert torch.equal(a.scores(), b.scores())


def test_constructor_shows_its_real_signature():
    # One door (issue 20): a plain class, so help() and IDEs show every parameter and its default.
    import inspect

    params = inspect.signature(tk.TDDSTracker).parameters
    assert list(params)[:2] == ["num_samples", "num_classes"]
    assert params["window"].default == 10 and params["prev_topk"].default is None
    assert params["on_out_of_range"].default == "error" and params["process_group"].default is None
    assert all(p.kind is not p.VAR_KEYWORD and p.kind is not p.VAR_POSITIONAL for p in params.values())
    assert type(tk.TDDSTracker) is type  # no metaclass
    t = tk.TDDSTracker(4, 3)
    assert isinstance(t, tk.TDDSTracker) and (t.rank, t.world_size, t.process_group) == (0, 1, None)


def test_process_group_names_make_tracker():
    # The sharded route of earlier releases: a one-line error saying what to call, nothing built.
    with pytest.raises(TypeError, match=r"process_group: .*make_tracker\(\.\.\., process_group=pg\)") as info:
        tk.TDDSTracker(4, 3, process_group=object())
    assert "\n" not in str(info.value)
    assert isinstance(tk.make_tracker(4, 3), tk.TDDSTracker)  # no process group, no torchrun: single


def test_save_final_drops_the_recording_state(tmp_path):
    # tracker.save(path, final=True): a complete tracker without its N x C state; loads back with
    # the same scores, stats and config. An incomplete tracker refuses, writing nothing.
    t = tk.TDDSTracker(6, 3, window=3, trajectory_len=3, backend="reference")
    with pytest.raises(ValueError, match=r"^final: expected a complete tracker") as info:
        t.save(tmp_path / "early.pt", final=True)
    assert "\n" not in str(info.value) and not (tmp_path / "early.pt").exists()
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        t.update(torch.randn(6, 3, generator=g), torch.arange(6))
        t.end_epoch()
    t.save(tmp_path / "full.pt")
    t.save(tmp_path / "final.pt", final=True)
    assert (tmp_path / "final.pt").stat().st_size < (tmp_path / "full.pt").stat().st_size
    back = tk.TDDSTracker(6, 3, window=3, trajectory_len=3, backend="reference")
    from tdds_kernels.core.checkpoint import expand_final_state, read

    sd = read(tmp_path / "final.pt")
    assert sd["final"] and not {"prev", "ring", "seen"} & sd.keys()
    back.load_state_dict(expand_final_state(sd))
    assert torch.equal(back.scores(), t.scores()) and back.stats == t.stats and back.complete
