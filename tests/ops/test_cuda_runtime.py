"""What the backends do to a CUDA training loop: host syncs, CUDA-graph capture, streams.

    - triton and cuda: update and epoch_step never sync the host (sync debug mode "error"),
      through the ops (with targets / row_stats too) and through TDDSTracker.update,
      forgotten-end_epoch check included;
    - the paths that do sync are pinned down by tests too (the reference backend);
    - a whole training step (forward, tracker.update, backward, SGD step) captured once in a
      CUDA graph and replayed across epoch boundaries gives what eager execution gives;
    - the kernels run on the current stream (a launch elsewhere changes the result).

Needs a CUDA GPU (skipped without one, never faked); the first tests run anywhere.
"""

import os
import warnings

import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.core.host_counters import HostSnapshots
from tdds_kernels.ops import registry as backends
from tdds_kernels.ops.schema import DUPLICATES, EPOCH, NUM_SLOTS, OUT_OF_RANGE, ROW_STATS

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU: CUDA runtime behaviour not tested")
DEV = "cuda"
FAST = ["triton", "cuda"]  # the backends that must stay sync-free and capturable


def ops_or_skip(name):
    """(update, epoch_step) of backend `name` on CUDA. The extension's absence skips, except
    under TDDS_REQUIRE_EXT=1 (benchmarks/gpu_check.sh after its build), where it fails."""
    device = torch.device(DEV)
    reason = backends._auto_reason(name, device)
    if reason is not None:
        if name == "cuda" and os.environ.get("TDDS_REQUIRE_EXT") == "1":
            pytest.fail(f"backend 'cuda': {reason}")
        pytest.skip(f"backend {name!r}: {reason}")
    b = backends.resolve(name, device)
    return b.update, b.epoch_step


# ------------------------------------------------------------------ anywhere
def test_auto_never_picks_interpreted_triton_for_cuda():
    import tdds_kernels.ops.triton as tt

    if not tt.INTERPRETED:
        pytest.skip("Triton kernels are compiled in this process (TRITON_INTERPRET is not 1)")
    # Under the interpreter the triton backend accepts CUDA tensors (asked for by name), but
    # auto must not pick it: it copies every tensor to the host and back.
    assert backends.unavailable_reason("triton", torch.device("cuda")) is None
    assert "TRITON_INTERPRET" in backends._auto_reason("triton", torch.device("cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert backends.resolve("auto", torch.device("cuda")).name != "triton"


def test_host_snapshots_on_cpu_are_immediate():
    counters = torch.arange(NUM_SLOTS, dtype=torch.int64)
    snaps = HostSnapshots()
    label, values = snaps.take(counters, "a")
    counters += 10  # the snapshot is a copy
    assert label == "a" and values.tolist() == list(range(NUM_SLOTS))


@needs_cuda
def test_compiled_triton_is_what_runs_on_cuda():
    # conftest leaves TRITON_INTERPRET unset when there is a GPU: the compiled kernels are tested
    # and auto picks them (unless a user set TRITON_INTERPRET=1 on purpose).
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 was set explicitly")
    import tdds_kernels.ops.triton as tt

    assert not tt.INTERPRETED
    # Triton imports and compiles here, so auto has a fast backend (whichever AUTO_ORDER puts first).
    assert tk.TDDSTracker(8, 3, window=3, device=DEV).backend in FAST


# ------------------------------------------------------------------ host syncs
def awkward_batch(n, b, c, seed):
    """Rows with in-batch duplicates, a non-finite row and two out-of-range indices."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (b,), generator=g)
    index[:3] = index[3]  # duplicates
    index[-2:] = torch.tensor([-1, n])
    z = torch.randn(b, c, generator=g) * 3
    z[4, 0] = float("nan")
    return z.to(DEV), index.to(DEV)


def fresh_state(n, c, w, storage=torch.float32):
    return (
        torch.zeros(n, c, dtype=storage, device=DEV),
        torch.full((n,), -1, dtype=torch.int32, device=DEV),
        torch.full((n, w - 1), float("nan"), device=DEV),
        torch.zeros(n, device=DEV),
        torch.zeros(NUM_SLOTS, dtype=torch.int64, device=DEV),
    )


class no_sync:
    """torch.cuda.set_sync_debug_mode("error") for the block: any host sync raises."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(0)


@needs_cuda
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c", [10, 9000])  # one block; chunked rows
@pytest.mark.parametrize("name", FAST)
def test_ops_do_not_sync(name, c, storage):
    update, step = ops_or_skip(name)
    n, w = 64, 3
    prev, seen, ring, score, counters = fresh_state(n, c, w, storage)
    z, index = awkward_batch(n, 40, c, seed=c)
    update(z, index, prev, seen, ring, counters)  # compiles (Triton) outside the checked block
    step(seen, ring, score, counters, 0.9)
    with no_sync():
        for e in range(2 * w):
            update(z + e, index, prev, seen, ring, counters)
            update(z - e, index.flip(0), prev, seen, ring, counters)
            step(seen, ring, score, counters, 0.9)
    assert counters[EPOCH].item() == 2 * w + 1 and counters[OUT_OF_RANGE].item() > 0
    assert (score > 0).any()  # windows were folded: the ops did their work


@needs_cuda
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("c", [10, 9000])  # one block; chunked rows
@pytest.mark.parametrize("name", FAST)
def test_ops_with_targets_do_not_sync(name, c, target_dtype):
    # The row stats (targets, row_stats) come from the same sync-free pass: same launches, no
    # host read; checked against the reference on CPU copies after the block.
    update, step = ops_or_skip(name)
    n, w, b = 64, 3, 40
    prev, seen, ring, score, counters = fresh_state(n, c, w)
    z, index = awkward_batch(n, b, c, seed=c)
    targets = torch.randint(0, c, (b,), generator=torch.Generator().manual_seed(c)).to(DEV, target_dtype)
    targets[5:7] = torch.tensor([-1, c])  # outside [0, C): NaN rows
    stats = torch.empty(b, len(ROW_STATS), device=DEV)
    update(z, index, prev, seen, ring, counters, targets, stats)  # compiles outside the block
    step(seen, ring, score, counters, 0.9)
    snapshots = []
    with no_sync():
        for e in range(3):
            before = tuple(t.clone() for t in (prev, seen, ring, counters))
            update(z + e, index, prev, seen, ring, counters, targets, stats)
            snapshots.append((e, before, stats.clone()))
            step(seen, ring, score, counters, 0.9)
    for e, before, got in snapshots:
        ref = tuple(t.cpu() for t in before)
        want = torch.empty(b, len(ROW_STATS))
        torch.ops.tdds.update((z + e).cpu(), index.cpu(), *ref, targets.cpu(), want)
        assert torch.equal(got.isnan().cpu(), want.isnan()) and not want.isnan().all()
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6, equal_nan=True)


@needs_cuda
@pytest.mark.parametrize("name", FAST)
def test_tracker_update_does_not_sync(name):
    ops_or_skip(name)
    n, b = 64, 32
    tr = tk.TDDSTracker(n, 10, window=3, trajectory_len=None, device=DEV, backend=name)
    base = torch.randn(n, 10, device=DEV)
    tr.update(base[:b], torch.arange(b, device=DEV))  # compile outside the checked block
    tr.end_epoch()
    for e in range(4):
        perm = torch.randperm(n, device=DEV)
        with no_sync():
            # The second batch reaches N rows: the forgotten-end_epoch check runs, sync-free.
            for part in perm.split(b):
                tr.update(base[part] + e, part)
        tr.end_epoch()  # syncs by design (it raises on skipped rows): outside the block
    assert tr.stats["duplicates"] == 0 and tr.stats["missing"] == n - b
    assert (tr.scores() > 0).any()


@needs_cuda
@pytest.mark.parametrize("name", FAST)
def test_forgotten_end_epoch_still_warns_on_cuda(name):
    # On CUDA the check reads the counters copy started one check earlier (no sync), so the
    # warning comes one check (N rows) later than on CPU, but it comes.
    ops_or_skip(name)
    n = 64
    tr = tk.TDDSTracker(n, 10, window=3, trajectory_len=None, device=DEV, backend=name)
    z, index = torch.randn(n, 10, device=DEV), torch.arange(n, device=DEV)
    tr.update(z, index)  # check 1: starts a copy
    torch.cuda.synchronize()
    tr.update(z, index)  # check 2: reads copy 1 (no duplicates yet), starts copy 2
    torch.cuda.synchronize()
    with pytest.warns(RuntimeWarning, match="forget end_epoch"):
        tr.update(z, index)  # check 3: copy 2 shows the second pass was all duplicates


@needs_cuda
def test_reference_backend_syncs():
    # Documented: the reference update picks rows with nonzero / boolean indexing, whose output
    # shapes depend on the data, so it waits for the device. Its epoch_step does not.
    n, c, w = 64, 10, 3
    prev, seen, ring, score, counters = fresh_state(n, c, w)
    z, index = awkward_batch(n, 40, c, seed=1)
    with no_sync(), pytest.raises(RuntimeError, match="synchroniz"):
        torch.ops.tdds.update(z, index, prev, seen, ring, counters)
    with no_sync():
        torch.ops.tdds.epoch_step(seen, ring, score, counters, 0.9)


@needs_cuda
@pytest.mark.parametrize("name", FAST)
def test_tracker_update_with_targets_does_not_sync(name):
    # The op writes the baselines' row stats and the fold is fixed-shape tensor code: no sync
    # (labels outside [0, C) are not checked on CUDA; debug=True checks them, with a sync).
    ops_or_skip(name)
    tr = tk.TDDSTracker(16, 10, window=3, device=DEV, backend=name)
    ref = tk.TDDSTracker(16, 10, window=3, backend="reference")
    z, index = torch.randn(8, 10, device=DEV), torch.arange(8, device=DEV)
    y = torch.randint(0, 10, (8,), device=DEV)
    tr.update(z, index, targets=y)  # creates the baselines (allocation, outside the check)
    tr.end_epoch()
    with no_sync():
        tr.update(z * 2, index, targets=y)
    tr.end_epoch()
    for scale in (1, 2):
        ref.update(z.cpu() * scale, index.cpu(), targets=y.cpu())
        ref.end_epoch()
    got, want = tr.baseline_scores(), ref.baseline_scores()
    for k in want:
        torch.testing.assert_close(got[k].cpu(), want[k], rtol=1e-5, atol=1e-5, equal_nan=True, msg=k)


# ------------------------------------------------------------------ streams
SLEEP_CYCLES = 400_000_000  # ~0.2 s at 2 GHz: far longer than the host needs to launch


def check_runs_on_current_stream(update, step):
    """The inputs hold placeholders (every index -1) until a side stream, after a long sleep,
    writes the real ones; the ops are launched right after, with that side stream current.
    Launched on the current stream they see the real batch; launched on any other stream (the
    default one, say) they run during the sleep, see only out-of-range rows and record nothing.
    The control at the end does exactly that on purpose and checks it shows."""
    n, c, b = 256, 100, 128
    real_z = torch.randn(b, c, device=DEV) * 3
    real_index = torch.randperm(n, device=DEV)[:b]

    def state():
        prev, seen, ring, score, counters = fresh_state(n, c, 3)
        counters[EPOCH] = 1
        seen.fill_(0)  # recorded in epoch 0: d is defined
        return prev, seen, ring, score, counters

    expected = state()
    torch.ops.tdds.update(real_z, real_index, *expected[:3], expected[4])
    torch.ops.tdds.epoch_step(expected[1], expected[2], expected[3], expected[4], 0.5)
    scratch = state()
    update(real_z, real_index, *scratch[:3], scratch[4])  # compile (Triton) before timing matters
    step(scratch[1], scratch[2], scratch[3], scratch[4], 0.5)

    def run(launch_stream=None):
        prev, seen, ring, score, counters = state()
        z, index = torch.zeros_like(real_z), torch.full_like(real_index, -1)
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            torch.cuda._sleep(SLEEP_CYCLES)
            z.copy_(real_z)
            index.copy_(real_index)
            with torch.cuda.stream(launch_stream or side):
                update(z, index, prev, seen, ring, counters)
                step(seen, ring, score, counters, 0.5)
        torch.cuda.synchronize()
        return prev, seen, ring, score, counters

    got = run()
    assert got[4].tolist() == expected[4].tolist() and got[4][OUT_OF_RANGE] == 0
    assert torch.equal(got[1], expected[1])
    torch.testing.assert_close(got[0], expected[0], rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got[2], expected[2], rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(got[3], expected[3], rtol=1e-5, atol=1e-5)
    control = run(launch_stream=torch.cuda.default_stream())
    assert control[4][OUT_OF_RANGE] == b, "control: a default-stream launch was not caught"


@needs_cuda
def test_triton_runs_on_the_current_stream():
    check_runs_on_current_stream(*ops_or_skip("triton"))


# ------------------------------------------------------------------ CUDA graphs
def train_setup(name, n, c, d, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, c)).to(DEV)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = tk.TDDSTracker(n, c, window=3, trajectory_len=None, device=DEV, backend=name)
    return model, opt, tracker


def train_step(model, opt, tracker, x, y, index):
    opt.zero_grad(set_to_none=True)
    logits = model(x)
    tracker.update(logits, index)
    torch.nn.functional.cross_entropy(logits, y).backward()
    opt.step()


@needs_cuda
@pytest.mark.parametrize("name", FAST)
def test_training_step_graph_replays_across_epochs(name):
    # One captured step serves every epoch: the op reads the epoch from counters on the device,
    # which end_epoch (run eagerly between replays; it syncs to check counters) advances.
    ops_or_skip(name)
    n, c, d, b, epochs = 256, 10, 32, 64, 5
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(n, d, generator=g).to(DEV)
    ys = torch.randint(0, c, (n,), generator=g).to(DEV)
    orders = [torch.randperm(n, generator=g).to(DEV) for _ in range(epochs)]

    eager = train_setup(name, n, c, d, seed=0)
    for e in range(epochs):
        for idx in orders[e].split(b):
            train_step(*eager, xs[idx], ys[idx], idx)
        eager[2].end_epoch()

    model, opt, tracker = train_setup(name, n, c, d, seed=0)
    static_idx = orders[0][:b].clone()
    static_x, static_y = xs[static_idx].clone(), ys[static_idx].clone()
    # Warm-up on a side stream (autograd, cuBLAS and Triton initialise outside the capture):
    # lr 0 keeps the weights, a throwaway tracker keeps the real one's state untouched.
    warm = tk.TDDSTracker(n, c, window=3, trajectory_len=None, device=DEV, backend=name)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.param_groups[0]["lr"] = 0.0
        for _ in range(3):
            train_step(model, opt, warm, static_x, static_y, static_idx)
        opt.param_groups[0]["lr"] = 0.1
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        train_step(model, opt, tracker, static_x, static_y, static_idx)
    assert tracker.stats["epochs"] == 0 and (tracker.state_dict()["seen"] == -1).all()  # only recorded

    for e in range(epochs):
        for idx in orders[e].split(b):
            static_idx.copy_(idx)
            static_x.copy_(xs[idx])
            static_y.copy_(ys[idx])
            graph.replay()
        tracker.end_epoch()

    assert tracker.stats == eager[2].stats and tracker.stats["windows"] == epochs - 2
    assert torch.equal(tracker.state_dict()["seen"], eager[2].state_dict()["seen"])
    torch.testing.assert_close(tracker.scores(), eager[2].scores(), rtol=1e-5, atol=1e-6)
    assert (tracker.scores() > 0).all()
    for p, q in zip(model.parameters(), eager[0].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("name", FAST)
def test_epoch_graph_with_epoch_step_inside(name):
    # A whole epoch in one graph, epoch_step included: replay r records epoch r and closes it.
    update, step = ops_or_skip(name)
    n, c, b, w, epochs = 96, 50, 32, 3, 6
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(b, c, generator=g) * 3, torch.randperm(n, generator=g)[:b]) for _ in range(epochs * 3)]
    eager = fresh_state(n, c, w)
    for e in range(epochs):
        for z, idx in batches[3 * e : 3 * e + 3]:
            update(z.to(DEV), idx.to(DEV), eager[0], eager[1], eager[2], eager[4])
        step(eager[1], eager[2], eager[3], eager[4], 0.9)

    state = fresh_state(n, c, w)
    static = [(torch.empty(b, c, device=DEV), torch.empty(b, dtype=torch.long, device=DEV)) for _ in range(3)]
    scratch = fresh_state(n, c, w)
    for z, idx in static:  # compile outside the capture (on scratch state)
        z.normal_()
        idx.copy_(torch.arange(b))
        update(z, idx, scratch[0], scratch[1], scratch[2], scratch[4])
    step(scratch[1], scratch[2], scratch[3], scratch[4], 0.9)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for z, idx in static:
            update(z, idx, state[0], state[1], state[2], state[4])
        step(state[1], state[2], state[3], state[4], 0.9)
    for e in range(epochs):
        for (z, idx), (zs, ids) in zip(batches[3 * e : 3 * e + 3], static):
            zs.copy_(z)
            ids.copy_(idx)
        graph.replay()
    assert state[4].tolist() == eager[4].tolist() and state[4][EPOCH] == epochs
    assert torch.equal(state[1], eager[1])
    for a, e_ in ((state[0], eager[0]), (state[2], eager[2]), (state[3], eager[3])):
        torch.testing.assert_close(a, e_, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert (state[3] > 0).any() and state[4][DUPLICATES] > 0  # cross-batch duplicates happened
