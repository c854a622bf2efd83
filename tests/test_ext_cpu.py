"""The C++ extension's CPU kernels (tdds::update_ext / epoch_step_ext) against the reference.

Rows that share an index inside one batch: exactly one is applied, and a parallel kernel may
apply any one of them, so those checks find the row that won and compare against the
reference fed that row (`reference_with_winners`).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdds_kernels as tk
from tdds_kernels.ops import schema as _ops
from tdds_kernels.ops.schema import DUPLICATES, EPOCH, MISSING, NONFINITE, OUT_OF_RANGE

if os.environ.get("TDDS_NO_EXT") == "1":
    pytest.skip("TDDS_NO_EXT=1: the C++ extension was not built", allow_module_level=True)
import tdds_kernels._C  # noqa: E402,F401  (a missing build is an error, not a skip)

from helpers import random_epochs  # noqa: E402

EXT_UPDATE, EXT_STEP = torch.ops.tdds.update_ext, torch.ops.tdds.epoch_step_ext
REF_UPDATE, REF_STEP = torch.ops.tdds.update, torch.ops.tdds.epoch_step
STORAGE = [torch.float32, torch.bfloat16, torch.float16]
LOGITS = [torch.float32, torch.float16, torch.bfloat16]
SENTINEL_PREV, SENTINEL_RING, SENTINEL_SCORE = 123.0, -7.0, -3.0


def poisoned_state(n, c, w, storage=torch.float32, epoch=1, seed=0):
    """State with sentinels everywhere and a mix of never/last-epoch/this-epoch seen values."""
    g = torch.Generator().manual_seed(seed)
    prev = torch.full((n, c), SENTINEL_PREV).to(storage)
    seen = torch.tensor([-1, epoch - 1, epoch - 2, epoch], dtype=torch.int32)[torch.randint(0, 4, (n,), generator=g)]
    if epoch == 0:
        seen[seen == epoch] = -1
    # rows recorded before hold a real cached log-softmax, so d is meaningful
    real = seen >= 0
    prev[real] = torch.log_softmax(torch.randn(int(real.sum()), c, generator=g) * 3, 1).to(storage)
    ring = torch.full((n, w - 1), SENTINEL_RING)
    score = torch.full((n,), SENTINEL_SCORE)
    counters = torch.tensor([5, 6, 7, 8, epoch], dtype=torch.int64)  # cumulative: kernels add to these
    return prev, seen, ring, score, counters


def clone(state):
    return tuple(t.clone() for t in state)


def tolerances(storage):
    # Two float32 implementations of exp/log differ by a few ulp; a reduced storage dtype can
    # round such a difference to one unit of its last place.
    return {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.bfloat16: dict(rtol=8e-3, atol=1e-5),
            torch.float16: dict(rtol=1e-3, atol=1e-5)}[storage]


def assert_state_close(ext, ref, storage=torch.float32):
    prev_e, seen_e, ring_e, counters_e = ext
    prev_r, seen_r, ring_r, counters_r = ref
    assert torch.equal(seen_e, seen_r)
    assert counters_e.tolist() == counters_r.tolist()
    torch.testing.assert_close(prev_e.float(), prev_r.float(), **tolerances(storage))
    torch.testing.assert_close(ring_e, ring_r, rtol=1e-5, atol=2e-6, equal_nan=True)


def reference_with_winners(logits, index, state, ext_prev):
    """Run the reference on `state`, keeping of each in-batch duplicate group the row whose log
    softmax the extension stored (it may pick any one). Returns the reference's state."""
    prev, seen, ring, counters = clone(state)
    n_samples = prev.shape[0]
    idx = index.long()
    finite = torch.isfinite(logits.float()).all(1)
    usable = (idx >= 0) & (idx < n_samples) & finite
    lp = torch.log(torch.softmax(logits.float(), 1) + _ops.EPS)
    keep = torch.ones(len(idx), dtype=torch.bool)
    dropped = 0
    for n in torch.unique(idx[usable]).tolist():
        rows = torch.nonzero(usable & (idx == n)).squeeze(1)
        if len(rows) < 2 or seen[n] == counters[EPOCH]:
            continue  # no choice to make: a single row, or all of them are duplicates
        dist = (lp[rows] - ext_prev[n].float()).abs().amax(1)
        winner = rows[int(dist.argmin())]
        keep[rows] = False
        keep[winner] = True
        dropped += len(rows) - 1
    REF_UPDATE(logits[keep], index[keep], prev, seen, ring, counters)
    counters[DUPLICATES] += dropped
    return prev, seen, ring, counters


def run_both(logits, index, state):
    """(ext state, reference state) after one update on copies of state = (prev, seen, ring, counters)."""
    ext = clone(state)
    EXT_UPDATE(logits, index, *ext)
    return ext, reference_with_winners(logits, index, state, ext[0])


# ---------------------------------------------------------------------------------- schemas
def test_schemas_match_the_reference():
    assert _ops.schema_of(EXT_UPDATE.default) == _ops.UPDATE_SCHEMA
    assert _ops.schema_of(EXT_STEP.default) == _ops.EPOCH_STEP_SCHEMA
    assert _ops.schema_of(EXT_UPDATE.default) == _ops.schema_of(REF_UPDATE.default)
    assert _ops.schema_of(EXT_STEP.default) == _ops.schema_of(REF_STEP.default)


def test_backend_resolves_to_the_extension():
    b = tk.TDDSTracker(10, 3, window=3, backend="cpu")
    assert b.backend == "cpu"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tdds::update_ext", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tdds::update_ext", "Meta")


@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_opcheck(storage, logits_dtype, index_dtype):
    prev, seen, ring, score, counters = poisoned_state(8, 5, 3, storage, epoch=0)
    logits = torch.randn(5, 5).to(logits_dtype)
    index = torch.tensor([0, 2, 2, 7, 9], dtype=index_dtype)  # a duplicate and an out-of-range row
    torch.library.opcheck(EXT_UPDATE.default, (logits, index, prev, seen, ring, counters))
    torch.library.opcheck(EXT_STEP.default, (seen, ring, score, counters, 0.9))
    counters[EPOCH] = 2
    torch.library.opcheck(EXT_UPDATE.default, (logits, index, prev, seen, ring, counters))
    torch.library.opcheck(EXT_STEP.default, (seen, ring, score, counters, 0.9))


def test_bad_arguments_raise():
    prev, seen, ring, score, counters = poisoned_state(8, 5, 3)
    with pytest.raises(RuntimeError, match="logits"):
        EXT_UPDATE(torch.randn(2, 5).double(), torch.tensor([0, 1]), prev, seen, ring, counters)
    with pytest.raises(RuntimeError, match="prev"):
        EXT_UPDATE(torch.randn(2, 4), torch.tensor([0, 1]), prev, seen, ring, counters)
    with pytest.raises(RuntimeError, match="index"):
        EXT_UPDATE(torch.randn(2, 5), torch.tensor([0.0, 1.0]), prev, seen, ring, counters)
    with pytest.raises(RuntimeError, match="counters"):
        EXT_STEP(seen, ring, score, counters[:4], 0.9)
    with pytest.raises(RuntimeError, match="seen"):
        EXT_STEP(seen.long(), ring, score, counters, 0.9)


# ------------------------------------------------------------------- random vs reference
@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("logits_dtype", LOGITS)
@pytest.mark.parametrize("b,c", [(1, 1), (13, 7), (64, 32), (40, 100), (300, 1000), (97, 1271)])
def test_update_matches_reference(storage, logits_dtype, b, c):
    n, w = 3 * b + 5, 4
    for epoch in (0, 1, 5):
        state = poisoned_state(n, c, w, storage, epoch=epoch, seed=b + c + epoch)
        prev, seen, ring, _, counters = state
        index = torch.randperm(n)[:b]
        logits = (torch.randn(b, c) * 4).to(logits_dtype)
        ext, ref = run_both(logits, index, (prev, seen, ring, counters))
        assert_state_close(ext, ref, storage)
        untouched = torch.ones(n, dtype=torch.bool)
        untouched[index] = False
        assert torch.equal(ext[0][untouched], prev[untouched])  # sentinels (and old rows) stay
        assert torch.equal(ext[2][untouched], ring[untouched])


@pytest.mark.parametrize("w", [2, 3, 10])
def test_epoch_step_matches_reference(w):
    n = 257
    for epoch in (0, 1, w - 2, w - 1, w, w + 7):
        if epoch < 0:
            continue
        prev, seen, ring, score, counters = poisoned_state(n, 3, w, epoch=max(epoch, 1), seed=epoch)
        counters[EPOCH] = epoch
        ring = torch.rand(n, w - 1)
        ring[torch.rand(n, w - 1) < 0.3] = float("nan")
        score = torch.rand(n)
        ext, ref = (seen.clone(), ring.clone(), score.clone(), counters.clone()), \
            (seen.clone(), ring.clone(), score.clone(), counters.clone())
        EXT_STEP(*ext, 0.8)
        REF_STEP(*ref, 0.8)
        assert torch.equal(ext[0], ref[0]) and ext[3].tolist() == ref[3].tolist()
        assert ext[3][EPOCH] == epoch + 1
        torch.testing.assert_close(ext[1], ref[1], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(ext[2], ref[2], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------ edge cases
def test_epoch_zero_writes_no_transition():
    prev, seen, ring, _, counters = poisoned_state(6, 5, 4, epoch=0)
    seen.fill_(-1)
    EXT_UPDATE(torch.randn(3, 5), torch.tensor([0, 3, 5]), prev, seen, ring, counters)
    assert seen.tolist() == [0, -1, -1, 0, -1, 0]
    assert torch.isnan(ring[[0, 3, 5], -1]).all()  # slot (0 - 1) mod 3, as the reference writes
    assert (ring[[0, 3, 5], :-1] == SENTINEL_RING).all() and (ring[[1, 2, 4]] == SENTINEL_RING).all()
    torch.testing.assert_close(prev[[0, 3, 5]].exp().sum(1), torch.ones(3))


def test_transition_value_known():
    # p = softmax([0, log 3]) = [1/4, 3/4] after q = [1/2, 1/2]:
    # d = 1/4 |log(1/4 + eps) - log(1/2 + eps)| + 3/4 |log(3/4 + eps) - log(1/2 + eps)|
    prev = torch.log(torch.tensor([[0.5, 0.5]]) + 1e-8)
    seen = torch.tensor([0], dtype=torch.int32)
    ring = torch.full((1, 2), SENTINEL_RING)
    counters = torch.tensor([0, 0, 0, 0, 1])
    EXT_UPDATE(torch.tensor([[0.0, float(np.log(3.0))]]), torch.tensor([0]), prev, seen, ring, counters)
    d = 0.25 * np.log(2.0) + 0.75 * np.log(1.5)
    assert ring[0, 0].item() == pytest.approx(d, rel=1e-6) and ring[0, 1] == SENTINEL_RING
    assert seen.tolist() == [1]


def test_duplicates_across_batches_are_counted_and_ignored():
    prev, seen, ring, _, counters = poisoned_state(10, 6, 3, epoch=1)
    seen.fill_(0)
    EXT_UPDATE(torch.randn(3, 6), torch.tensor([1, 4, 7]), prev, seen, ring, counters)
    after_first = clone((prev, seen, ring))
    EXT_UPDATE(torch.randn(3, 6), torch.tensor([4, 7, 2]), prev, seen, ring, counters)
    assert counters[DUPLICATES] == 5 + 2
    for a, b in zip(after_first, (prev, seen, ring)):
        assert torch.equal(a[[1, 4, 7]], b[[1, 4, 7]])
    assert seen[2] == 1


@pytest.mark.parametrize("c", [5, 1000])
def test_in_batch_duplicates_apply_exactly_one_row(c):
    # Many copies of few samples across a batch big enough to be split over threads.
    torch.set_num_threads(2)
    b, n = 512, 8
    for epoch in (0, 1):
        prev, seen, ring, _, counters = poisoned_state(n, c, 3, epoch=epoch, seed=c)
        index = torch.randint(0, n, (b,))
        logits = torch.randn(b, c) * 3
        ext, ref = run_both(logits, index, (prev, seen, ring, counters))
        assert_state_close(ext, ref)
        # the stored row is exactly one row's log-softmax, never a mix
        lp = torch.log(torch.softmax(logits, 1) + 1e-8)
        for s in torch.unique(index).tolist():
            if seen[s] != epoch:
                rows = lp[index == s]
                assert (rows - ext[0][s]).abs().amax(1).min() < 1e-5


def test_identical_duplicate_rows_match_the_reference_exactly():
    prev, seen, ring, _, counters = poisoned_state(20, 33, 4, epoch=2)
    index = torch.tensor([3, 3, 5, 3, 5, 9])
    logits = torch.randn(20, 33)[index]  # duplicate rows carry identical logits
    ext = clone((prev, seen, ring, counters))
    ref = clone((prev, seen, ring, counters))
    EXT_UPDATE(logits, index, *ext)
    REF_UPDATE(logits, index, *ref)
    assert_state_close(ext, ref)


def test_missing_samples_get_undefined_transitions():
    prev, seen, ring, score, counters = poisoned_state(6, 4, 3, epoch=1)
    seen.fill_(0)
    counters[EPOCH] = 1
    EXT_UPDATE(torch.randn(4, 4), torch.tensor([0, 1, 2, 3]), prev, seen, ring, counters)
    EXT_STEP(seen, ring, score, counters, 0.9)
    assert counters[MISSING] == 6 + 2 and counters[EPOCH] == 2
    assert torch.isnan(ring[[4, 5], 0]).all() and not torch.isnan(ring[:4, 0]).any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", LOGITS)
def test_nonfinite_rows_are_skipped_and_do_not_claim(bad, dtype):
    prev, seen, ring, _, counters = poisoned_state(5, 40, 3, epoch=1)
    seen.fill_(0)
    logits = torch.randn(3, 40)
    logits[1, 17] = bad
    before = clone((prev, seen, ring))
    EXT_UPDATE(logits.to(dtype), torch.tensor([0, 2, 4]), prev, seen, ring, counters)
    assert counters[NONFINITE] == 7 + 1 and counters[DUPLICATES] == 5
    assert seen.tolist() == [1, 0, 0, 0, 1]
    assert torch.equal(prev[2], before[0][2]) and torch.equal(ring[2], before[2][2])
    # a finite row for that sample later in the epoch is still applied
    EXT_UPDATE(torch.randn(1, 40).to(dtype), torch.tensor([2]), prev, seen, ring, counters)
    assert seen[2] == 1 and counters[DUPLICATES] == 5


def test_nonfinite_row_beside_its_finite_duplicate():
    prev, seen, ring, _, counters = poisoned_state(4, 8, 3, epoch=1)
    seen.fill_(0)
    logits = torch.randn(2, 8)
    logits[0, 0] = float("nan")
    ext, ref = run_both(logits, torch.tensor([1, 1]), (prev, seen, ring, counters))
    assert_state_close(ext, ref)
    assert ext[3][NONFINITE] == 7 + 1 and ext[3][DUPLICATES] == 5


def test_out_of_range_rows_are_skipped_and_counted():
    prev, seen, ring, _, counters = poisoned_state(5, 6, 3, epoch=1)
    before = clone((prev, seen, ring))
    index = torch.tensor([-1, 5, 1000, -(2**40)])
    EXT_UPDATE(torch.randn(4, 6), index, prev, seen, ring, counters)
    assert counters[OUT_OF_RANGE] == 8 + 4
    for a, b in zip(before, (prev, seen, ring)):
        assert torch.equal(a, b)
    EXT_UPDATE(torch.randn(2, 6), torch.tensor([-3, 7], dtype=torch.int32), prev, seen, ring, counters)
    assert counters[OUT_OF_RANGE] == 8 + 6


def test_empty_batch_is_a_noop():
    prev, seen, ring, _, counters = poisoned_state(5, 6, 3)
    before = clone((prev, seen, ring, counters))
    EXT_UPDATE(torch.empty(0, 6), torch.empty(0, dtype=torch.long), prev, seen, ring, counters)
    for a, b in zip(before, (prev, seen, ring, counters)):
        assert torch.equal(a, b)


def test_extreme_logits():
    prev, seen, ring, _, counters = poisoned_state(4, 50, 3, epoch=1)
    seen.fill_(0)
    logits = torch.stack([torch.full((50,), -300.0), torch.full((50,), 3e38),
                          torch.linspace(-1e4, 1e4, 50), torch.zeros(50)])
    ext, ref = run_both(logits, torch.arange(4), (prev, seen, ring, counters))
    assert_state_close(ext, ref)


# -------------------------------------------------------------------- hypothesis fuzzing
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_batches(data):
    """Random batch/index patterns: in-batch duplicates (spread over both threads), repeats
    across batches, out-of-range and non-finite rows, any seen state, epoch and window."""
    torch.set_num_threads(2)
    n = data.draw(st.integers(1, 40), label="n")
    c = data.draw(st.sampled_from([1, 3, 16, 33, 257, 600]), label="c")
    w = data.draw(st.integers(2, 6), label="w")
    epoch = data.draw(st.integers(0, 8), label="epoch")
    storage = data.draw(st.sampled_from(STORAGE), label="storage")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    state = poisoned_state(n, c, w, storage, epoch=epoch, seed=seed)
    prev, seen, ring, _, counters = state
    g = torch.Generator().manual_seed(seed)
    for _ in range(data.draw(st.integers(1, 3), label="batches")):
        b = data.draw(st.integers(0, 200), label="b")
        pool = data.draw(st.integers(1, n + 3), label="pool")  # small pools force duplicates
        index = torch.randint(-1, pool, (b,), generator=g)
        index[index >= pool - 1] += data.draw(st.integers(0, 2))  # sometimes past N
        logits = torch.randn(b, c, generator=g) * 5
        if b:
            bad = torch.rand(b, generator=g) < 0.1
            logits[bad, 0] = float("nan")
        ext, ref = run_both(logits, index, (prev, seen, ring, counters))
        assert_state_close(ext, ref, storage)
        prev, seen, ring, counters = ext


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_isa_variants_match_reference(capability):
    """The kernels are compiled per ISA and picked at run time; force the narrower ones."""
    code = textwrap.dedent("""
        import torch, tdds_kernels, tdds_kernels._C
        torch.manual_seed(0)
        print(torch.backends.cpu.get_cpu_capability())
        for storage in (torch.float32, torch.bfloat16, torch.float16):
            for c in (1, 37, 1271):
                n, b = 50, 40
                state = [torch.log_softmax(torch.randn(n, c), 1).to(storage), torch.zeros(n, dtype=torch.int32),
                         torch.full((n, 2), -7.0), torch.tensor([0, 0, 0, 0, 1])]
                ext, ref = [t.clone() for t in state], [t.clone() for t in state]
                x, i = torch.randn(b, c) * 3, torch.randperm(n)[:b]
                torch.ops.tdds.update_ext(x, i, *ext)
                torch.ops.tdds.update(x, i, *ref)
                tol = 1e-5 if storage == torch.float32 else 1e-2
                torch.testing.assert_close(ext[0].float(), ref[0].float(), rtol=tol, atol=1e-5)
                torch.testing.assert_close(ext[2], ref[2], rtol=1e-5, atol=2e-6, equal_nan=True)
                assert torch.equal(ext[1], ref[1]) and torch.equal(ext[3], ref[3])
        for w in (2, 5, 12):  # epoch step: whole vectors of samples and a scalar tail
            n = 1000 + 7
            ring = torch.rand(n, w - 1)
            ring[torch.rand(n, w - 1) < 0.3] = float("nan")
            state = [torch.randint(w - 1, w + 1, (n,), dtype=torch.int32), ring, torch.rand(n),
                     torch.tensor([0, 0, 0, 0, w])]
            ext, ref = [t.clone() for t in state], [t.clone() for t in state]
            torch.ops.tdds.epoch_step_ext(*ext, 0.7)
            torch.ops.tdds.epoch_step(*ref, 0.7)
            torch.testing.assert_close(ext[1], ref[1], rtol=0, atol=0, equal_nan=True)
            torch.testing.assert_close(ext[2], ref[2], rtol=1e-6, atol=1e-7)
            assert torch.equal(ext[3], ref[3])
        print("ok")
    """)
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cap, ok = out.stdout.split()
    assert ok == "ok"
    if capability == "avx2" and cap == "DEFAULT":
        pytest.skip("this CPU has no AVX2; only the DEFAULT variant ran")
    assert cap == capability.upper()


# ---------------------------------------------------------------------- tracker end to end
@pytest.mark.parametrize("storage", STORAGE)
@pytest.mark.parametrize("w,t", [(3, 5), (4, 4), (5, 9)])  # W=3, W=T
def test_tracker_matches_reference_backend(storage, w, t):
    rng = np.random.default_rng(w * 10 + t)
    epochs = random_epochs(rng, 60, 23, t, p_missing=0.1, p_dup=0.1, p_nonfinite=0.05)
    kw = dict(num_samples=60, num_classes=23, window=w, decay=0.7, trajectory_len=t, storage_dtype=storage,
              on_nonfinite="skip")
    a, b = tk.TDDSTracker(backend="cpu", **kw), tk.TDDSTracker(backend="reference", **kw)
    for batches in epochs:
        for logits, index in batches:
            a.update(torch.from_numpy(logits), torch.from_numpy(index))
            b.update(torch.from_numpy(logits), torch.from_numpy(index))
        a.end_epoch()
        b.end_epoch()
    assert a.complete and b.complete and a.stats == b.stats
    tol = dict(rtol=1e-5, atol=2e-6) if storage == torch.float32 else dict(rtol=5e-2, atol=1e-3)
    torch.testing.assert_close(a.scores(), b.scores(), **tol)
