"""One result whatever the execution order: the first usable occurrence of a sample wins.

Within an epoch the first occurrence of a sample counts; among the rows of one batch with the
same index, exactly the one at the lowest batch position among the usable rows (index in range,
logits finite) is applied, in every backend, whatever the threads (C++ `cpu`), programs
(Triton) or warps (CUDA) do. The reference (`first_occurrences` after filtering usable, fresh
rows) states the rule; every backend must give its `seen` and counters bit for bit and its
prev/ring/score within fp32 rounding, and repeated runs must agree with each other bit for bit.

The scenario makes a wrong winner show: every sample appears many times per batch with
different logits per copy, the first copies of some samples are non-finite (so the winner is a
later row), some rows are out of range, and some samples have only non-finite copies in an
epoch (missing). Triton runs under TRITON_INTERPRET=1 with the interpreter's program order
reversed and shuffled (on a GPU the scheduler picks the order).
"""

import contextlib

import numpy as np
import pytest
import torch

from tdds_kernels.ops import registry as backends
from tdds_kernels.ops import schema

DECAY = 0.9
WINDOW = 3  # W − 1 = 2 ring slots: windows fold from epoch 2 on, so 5 epochs fold 3 times
# prev holds log(p + 1e-8) in the storage dtype: a kernel's fp32 log may round to the
# neighbouring bf16 value, and d (ring, score) inherits that from the next epoch on.
TOL = {
    torch.float32: dict(prev=dict(atol=2e-6, rtol=2e-6), ring=dict(atol=1e-5, rtol=1e-5)),
    torch.bfloat16: dict(prev=dict(atol=1e-5, rtol=8e-3), ring=dict(atol=2e-3, rtol=2e-3)),
}


def scenario(n, copies, c, epochs, seed):
    """Per epoch one batch of n·copies rows (+ 6 out-of-range rows): each sample `copies` times
    in shuffled order, different logits per copy. Every 4th sample's first two copies in batch
    order are non-finite (a NaN, a +inf); sample 1 + epoch has only non-finite copies."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for e in range(epochs):
        index = torch.arange(n).repeat(copies)[torch.randperm(n * copies, generator=g)]
        index = torch.cat([index, torch.tensor([-1, n, n + 7, -(2**40), n, -1])])
        index = index[torch.randperm(len(index), generator=g)]
        logits = torch.randn(len(index), c, generator=g) * 3
        for s in range(0, n, 4):
            first, second = torch.nonzero(index == s).squeeze(1)[:2].tolist()
            logits[first, c // 2] = float("nan")
            logits[second, 0] = float("inf")
        logits[index == (1 + e) % n, -1] = -float("inf")
        out.append((logits, index))
    return out


def fresh_state(n, c, storage, device, k=None):
    """(previous row..., seen, ring, score, counters): the previous row is prev, or with k the
    compressed (prev_val, prev_idx, prev_rest) of docs/design.md §2.1."""
    if k is None:
        row = (torch.zeros(n, c, dtype=storage, device=device),)
    else:
        row = (
            torch.zeros(n, k, dtype=storage, device=device),
            torch.zeros(n, k, dtype=schema.topk_index_dtype(c), device=device),
            torch.zeros(n, dtype=storage, device=device),
        )
    seen = torch.full((n,), -1, dtype=torch.int32, device=device)
    ring = torch.full((n, WINDOW - 1), float("nan"), device=device)
    score = torch.zeros(n, device=device)
    counters = torch.zeros(schema.NUM_SLOTS, dtype=torch.int64, device=device)
    return (*row, seen, ring, score, counters)


def run(update, epoch_step, batches, n, storage, device, index_dtype=torch.int64, k=None, **kw):
    state = fresh_state(n, batches[0][0].shape[1], storage, device, k)
    for logits, index in batches:
        update(logits.to(device), index.to(device, index_dtype), *state[:-2], state[-1], **kw)
        epoch_step(*state[-4:], DECAY)
    return state


def reference_run(batches, n, storage, k=None):
    update = torch.ops.tdds.update if k is None else torch.ops.tdds.update_topk
    return run(update, torch.ops.tdds.epoch_step, batches, n, storage, "cpu", k=k)


def assert_matches_reference(out, ref, storage):
    out = tuple(t.cpu() for t in out)
    *row, seen, ring, score, counters = out
    *r_row, r_seen, r_ring, r_score, r_counters = ref
    assert counters.tolist() == r_counters.tolist()
    assert torch.equal(seen, r_seen)
    tol = TOL[storage]
    for got, want in zip(row, r_row):  # class ids exactly, logs within rounding
        if got.is_floating_point():
            torch.testing.assert_close(got.float(), want.float(), **tol["prev"])
        else:
            assert torch.equal(got, want)
    torch.testing.assert_close(ring, r_ring, equal_nan=True, **tol["ring"])
    torch.testing.assert_close(score, r_score, **tol["ring"])


def assert_identical(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


def test_scenario_has_winners_that_are_not_the_first_row():
    # The test below is only as strong as its batches: copies whose logits differ, a non-finite
    # first copy for some samples, samples with no finite copy, and out-of-range rows.
    ((logits, index),) = scenario(64, 128, 100, 1, seed=0)
    finite = torch.isfinite(logits).all(1)
    in_range = (index >= 0) & (index < 64)
    assert (~in_range).sum() == 6 and (in_range & ~finite).sum() == 2 * 16 + 128
    first_rows = [int(torch.nonzero(index == s)[0]) for s in range(64)]
    assert not finite[first_rows].all()
    assert (logits[index == 5][0] != logits[index == 5][1]).any()


# -------------------------------------------------------------------------- C++ cpu backend
def ext_ops(device, topk=False):
    reason = backends.unavailable_reason(device, torch.device(device), topk)
    if reason is not None:
        pytest.skip(reason)
    ops = backends.resolve(device, torch.device(device), topk)
    return ops.update, ops.epoch_step


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("k", [None, 5], ids=["full", "top5"])
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cpu_backend_first_occurrence_wins_on_every_run(storage, k, threads):
    # k: the compressed previous row (update_topk_ext), driven by the same row partitioning.
    update, epoch_step = ext_ops("cpu", topk=k is not None)
    n, copies, c = 64, 128, 100
    batches = scenario(n, copies, c, 5, seed=1)
    ref = reference_run(batches, n, storage, k)
    # More threads than cores: the OS interleaves them, so a claim race would show.
    threads(4)
    runs = [run(update, epoch_step, batches, n, storage, "cpu", k=k) for _ in range(8)]
    for out in runs:
        assert_matches_reference(out, ref, storage)
        assert_identical(out, runs[0])
    # The per-row arithmetic does not depend on which task runs a row: one thread, same bits.
    threads(1)
    assert_identical(run(update, epoch_step, batches, n, storage, "cpu", k=k), runs[0])


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_cpu_backend_strided_indices(index_dtype, threads):
    # Indices of one residue class (what one DistributedSampler rank sees) with duplicates:
    # the split by sample must still cover every row once.
    update, epoch_step = ext_ops("cpu")
    n = 512
    batches = []
    g = torch.Generator().manual_seed(3)
    for _e in range(4):  # 2048 rows of 40 classes: several tasks
        index = (torch.arange(0, n, 4).repeat(16))[torch.randperm(2048, generator=g)]
        batches.append((torch.randn(2048, 40, generator=g) * 3, index))
    ref = reference_run(batches, n, torch.float32)
    threads(4)
    out = run(update, epoch_step, batches, n, torch.float32, "cpu", index_dtype=index_dtype)
    assert_matches_reference(out, ref, torch.float32)


# --------------------------------------------------------------- Triton, any program order
@contextlib.contextmanager
def programs_in(order):
    """Run the interpreter's programs in `order` ("forward", "reverse", "shuffled") along grid
    axis 0; yields the list of program ids in the order they ran.

    Triton 3.9's interpreter (triton/runtime/interpreter.py, GridExecutor.__call__) loops
    `for x in range(grid[0])` and calls interpreter_builder.set_grid_idx(x, y, z) before each
    program; tl.program_id reads what it set. Remapping x there permutes the programs."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    original = builder.set_grid_idx
    ran = []

    def permuted(x, y, z):
        count = builder.grid_dim[0]
        if order == "reverse":
            x = count - 1 - x
        elif order == "shuffled":
            x = int(np.random.default_rng(count).permutation(count)[x])
        if count > 1:  # one-program launches (the sort keys of a small batch) have no order to show
            ran.append(x)
        original(x, y, z)

    builder.set_grid_idx = permuted
    try:
        yield ran
    finally:
        builder.set_grid_idx = original


def need_interpreter():
    if backends.unavailable_reason("triton", torch.device("cpu")) is not None:
        pytest.skip("the Triton interpreter is not in use (TRITON_INTERPRET=1 not set)")


@pytest.fixture(params=["forward", "reverse", "shuffled"])
def program_order(request):
    need_interpreter()
    with programs_in(request.param) as ran:
        yield request.param, ran


@pytest.mark.parametrize(
    "c, block, storage, k",
    [
        (10, None, torch.float32, None),
        (10, None, torch.bfloat16, None),
        (300, 128, torch.float32, None),
        (40, 16, torch.float32, 3),
    ],
    ids=["C10-f32", "C10-bf16", "C300-chunked-f32", "C40-chunked-top3-f32"],
)
def test_triton_first_occurrence_wins_in_any_program_order(program_order, c, block, storage, k):
    import tdds_kernels.ops.triton as tt

    order, ran = program_order
    n, copies = 12, 8
    batches = scenario(n, copies, c, 4, seed=2)
    ref = reference_run(batches, n, storage, k)
    update = tt.update if k is None else tt.update_topk
    out = run(update, tt.epoch_step, batches, n, storage, "cpu", k=k, **({"block": block} if block else {}))
    # the patch took effect: the first launch (an update of `rows` programs) ran in that order
    rows = n * copies + 6
    expected = {"forward": list(range(rows)), "reverse": list(range(rows))[::-1]}
    assert sorted(ran[:rows]) == list(range(rows))
    assert ran[:rows] == expected[order] if order in expected else ran[:rows] != sorted(ran[:rows])
    assert_matches_reference(out, ref, storage)


def with_targets(batches, seed):
    """Targets for scenario() batches: mostly random classes, some the row's argmax (correct),
    some tied with another class for the largest logit, some outside [0, C) (NaN rows)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for logits, index in batches:
        c = logits.shape[1]
        logits = logits.clone()
        y = torch.randint(0, c, (len(index),), generator=g)
        kind = torch.randint(0, 6, (len(index),), generator=g)
        best = logits.nan_to_num(0, 0, 0).argmax(dim=1)
        y = torch.where(kind == 0, best, y)
        tie = kind == 1
        logits[tie, (best[tie] + 1) % c] = logits[tie, best[tie]]
        y = torch.where(kind == 2, c, torch.where(kind == 3, -1, y))
        out.append((logits, index, y))
    return out


def run_with_targets(update, epoch_step, batches, n, storage, k=None, **kw):
    """run() with targets: (final state, the row_stats of every batch)."""
    state = fresh_state(n, batches[0][0].shape[1], storage, "cpu", k)
    stats = []
    for logits, index, y in batches:
        stats.append(torch.full((len(index), len(schema.ROW_STATS)), 7.0))
        update(logits, index, *state[:-2], state[-1], y, stats[-1], **kw)
        epoch_step(*state[-4:], DECAY)
    return state, stats


@pytest.mark.parametrize(
    "c, block, k", [(10, None, None), (300, 128, None), (40, 16, 3)], ids=["C10", "C300-chunked", "C40-chunked-top3"]
)
def test_triton_row_stats_identical_in_any_program_order(c, block, k):
    """With targets, the row stats (written by the head program of each row's run) and the TDDS
    state come out bit for bit the same whatever order the programs run in, and match the
    reference."""
    import tdds_kernels.ops.triton as tt

    need_interpreter()
    n, copies = 12, 8
    batches = with_targets(scenario(n, copies, c, 2, seed=4), seed=5)
    ref_update = torch.ops.tdds.update if k is None else torch.ops.tdds.update_topk
    ref_state, ref_stats = run_with_targets(ref_update, torch.ops.tdds.epoch_step, batches, n, torch.float32, k)
    assert any(bool((s[:, schema.CORRECT] == 1).any()) for s in ref_stats), "no correct row: a weak scenario"
    update = tt.update if k is None else tt.update_topk
    runs = {}
    for order in ("forward", "reverse", "shuffled"):
        with programs_in(order) as ran:
            runs[order] = run_with_targets(update, tt.epoch_step, batches, n, torch.float32, k, block=block)
        assert ran[: n * copies + 6] != sorted(ran[: n * copies + 6]) or order == "forward"
    for state, stats in runs.values():
        assert_matches_reference(state, ref_state, torch.float32)
        for got, want in zip(stats, ref_stats):
            assert torch.equal(got.isnan(), want.isnan())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert_identical(state, runs["forward"][0])
        assert_identical(stats, runs["forward"][1])


# ------------------------------------------------------------------------ CUDA devices
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_first_occurrence_wins_on_every_run(backend):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = backends.unavailable_reason(backend, torch.device("cuda"))
    if reason is not None:
        pytest.skip(reason)
    ops = backends.resolve(backend, torch.device("cuda"))
    n, copies, c = 64, 128, 1000
    storage = torch.float32
    batches = scenario(n, copies, c, 5, seed=1)
    ref = reference_run(batches, n, storage)
    runs = [run(ops.update, ops.epoch_step, batches, n, storage, "cuda") for _ in range(8)]
    for out in runs:
        assert_matches_reference(out, ref, storage)
        assert_identical(out, runs[0])
