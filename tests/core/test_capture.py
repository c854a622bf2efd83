"""The tracker inside a CUDA-graph capture (docs/design.md §3, §4): its host-side diagnostics
stay out of the capture and resume after it, and the baselines' state is never created inside
one (its initial fills would re-run on every replay).

The first tests run anywhere, with the capture state replaced (host_counters.stream_capturing);
the CUDA tests capture a real step and are skipped without a GPU (never faked).
"""

import warnings

import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.core import host_counters
from tdds_kernels.core.host_counters import HostSnapshots
from tdds_kernels.ops.schema import NUM_SLOTS

from tests.support.helpers import cuda_backend_or_skip

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU: CUDA-graph capture not tested")
FAST = ["triton", "cuda"]


def capturing(monkeypatch, value: bool) -> None:
    monkeypatch.setattr(host_counters, "stream_capturing", lambda device: value)


def tracker(n=32, c=10, device="cpu", backend="reference"):
    return tk.TDDSTracker(n, c, window=3, trajectory_len=None, device=device, backend=backend)


# ------------------------------------------------------------------ anywhere (capture state replaced)
def test_host_snapshots_start_nothing_while_capturing(monkeypatch):
    counters = torch.arange(NUM_SLOTS, dtype=torch.int64)
    snaps = HostSnapshots()
    capturing(monkeypatch, True)
    assert snaps.take(counters, "in capture") is None
    capturing(monkeypatch, False)
    label, values = snaps.take(counters, "after")
    assert label == "after" and values.tolist() == list(range(NUM_SLOTS))


def test_forgotten_end_epoch_check_skipped_while_capturing_and_run_after(monkeypatch):
    n = 32
    tr = tracker(n)
    z, index = torch.randn(n, 10), torch.arange(n)
    takes = []
    real_take = HostSnapshots.take
    monkeypatch.setattr(HostSnapshots, "take", lambda self, *a: takes.append(a[1]) or real_take(self, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr.update(z, index)  # rows reach N: the check runs (nothing to warn about)
        assert takes == [(0, n)] and tr._state.next_dup_check == 2 * n
        capturing(monkeypatch, True)
        tr.update(z, index)  # all duplicates and due for a check, but captured: skipped, mark kept
        tr.update(z, index)
        assert takes == [(0, n)] and tr._state.next_dup_check == 2 * n
    capturing(monkeypatch, False)
    # The first update outside the capture runs the skipped check: it sees the duplicates the
    # captured calls recorded, and the mark moves past every row so far.
    with pytest.warns(RuntimeWarning, match="forget end_epoch"):
        tr.update(z, index)
    assert takes == [(0, n), (0, 4 * n)] and tr._state.next_dup_check == 5 * n
    assert tr.stats["duplicates"] == 3 * n


def test_baselines_are_not_created_inside_a_capture(monkeypatch):
    n, c = 32, 10
    tr = tracker(n, c)
    z, index, y = torch.randn(n, c), torch.randperm(n), torch.randint(0, c, (n,))
    before = tr.state_dict()
    capturing(monkeypatch, True)
    with pytest.raises(RuntimeError, match="CUDA graph capture") as err:
        tr.update(z, index, targets=y)
    assert "\n" not in str(err.value) and "targets" in str(err.value)
    after = tr.state_dict()
    for k in ("seen", "counters", "prev", "ring", "score"):
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert tr.baseline_state_dict() is None
    # Created by an eager call, the state is then updated in place by captured ones.
    capturing(monkeypatch, False)
    tr.update(z, index, targets=y)
    tr.end_epoch()
    capturing(monkeypatch, True)
    tr.update(z * 2, index, targets=y)
    capturing(monkeypatch, False)
    tr.end_epoch()
    ref = tracker(n, c)
    for scale in (1, 2):
        ref.update(z * scale, index, targets=y)
        ref.end_epoch()
    got, want = tr.baseline_scores(), ref.baseline_scores()
    for k in want:
        assert torch.equal(got[k].isnan(), want[k].isnan()), k
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, equal_nan=True, msg=k)


# ------------------------------------------------------------------ a real capture (CUDA)
@needs_cuda
@pytest.mark.parametrize("with_targets", [False, True])
@pytest.mark.parametrize("name", FAST)
def test_captured_step_of_a_warmed_up_tracker_replays_like_eager(name, with_targets):
    # N = B = 32: every update reaches the next forgotten-end_epoch check, the captured one too.
    # Warm-up runs on the real tracker (epoch 0's step): it starts a counters copy, compiles
    # the kernels and, with targets, creates the baselines' state, all outside the capture.
    cuda_backend_or_skip(name)
    n = b = 32
    c = 10
    g = torch.Generator().manual_seed(7)
    batches = [
        (torch.randn(b, c, generator=g) * 3, torch.randperm(n, generator=g), torch.randint(0, c, (b,), generator=g))
        for _ in range(3)
    ]
    batches = [tuple(t.to("cuda") for t in batch) for batch in batches]

    def step(tr, z, index, y):
        tr.update(z, index, **({"targets": y} if with_targets else {}))

    eager = tracker(n, c, "cuda", name)
    for batch in batches:
        step(eager, *batch)
        eager.end_epoch()

    tr = tracker(n, c, "cuda", name)
    static = tuple(t.clone() for t in batches[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(tr, *static)  # epoch 0, eagerly
    torch.cuda.current_stream().wait_stream(side)
    tr.end_epoch()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(tr, *static)
    for batch in batches[1:]:  # two epochs of replays
        for dst, src in zip(static, batch):
            dst.copy_(src)
        graph.replay()
        tr.end_epoch()

    assert tr.stats == eager.stats and tr.stats["windows"] == 1
    assert torch.equal(tr.state_dict()["seen"], eager.state_dict()["seen"])
    torch.testing.assert_close(tr.scores(), eager.scores(), rtol=1e-5, atol=1e-6)
    assert (tr.scores() > 0).all()
    if with_targets:
        got, want = tr.baseline_scores(), eager.baseline_scores()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, equal_nan=True, msg=k)
        assert (tr.baseline_state_dict()["count"] == 3).all()  # not reset by a replayed fill
    # The check resumes outside the capture: a forgotten end_epoch() still warns (one check
    # late on CUDA, see test_cuda_runtime.py).
    z, index, _ = batches[0]
    tr.update(z, index)
    torch.cuda.synchronize()
    tr.update(z, index)
    torch.cuda.synchronize()
    with pytest.warns(RuntimeWarning, match="forget end_epoch"):
        tr.update(z, index)


@needs_cuda
@pytest.mark.parametrize("name", FAST)
def test_capturing_the_first_update_with_targets_raises(name):
    cuda_backend_or_skip(name)
    tr = tracker(32, 10, "cuda", name)
    z, index = torch.randn(32, 10, device="cuda"), torch.arange(32, device="cuda")
    y = torch.zeros(32, dtype=torch.int64, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "the CUDA graph is empty"
        with pytest.raises(RuntimeError, match="CUDA graph capture"):
            with torch.cuda.graph(graph):
                tr.update(z, index, targets=y)
    assert tr.baseline_state_dict() is None and (tr.state_dict()["seen"] == -1).all()
