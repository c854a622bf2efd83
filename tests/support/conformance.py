"""The op conformance suite's shared part: one scenario per test, run on every (backend, device) pair.

The pairs (tests.support.helpers.backend_cases, read from the backend table): reference, cpu (C++
extension) and triton (interpreted) on CPU; reference, triton and cuda (extension) on a GPU,
skipped without one. Op-level scenarios compare a backend with the reference op run on CPU copies
of the same state (so the reference on CUDA is checked too; the CPU reference against itself
would be no check, so it takes part only where a scenario has its own expected values).
Tracker-level scenarios compare every pair with the dense float64 restatement
(tests/support/dense.py) and with the release fixtures (tests/fixtures).

Rows that share an index inside one batch: every backend applies the first usable one in batch
order, whatever its execution order, so duplicates are compared exactly like any other row.

The scenarios: tests/ops/test_conformance_{update,epoch_step,topk,targets,trackers}.py; each
makes its `case` / `other` fixtures with pairs() below.
"""

import functools

import pytest
import torch

from tdds_kernels.ops import reference_topk, registry
from tdds_kernels.ops.schema import CORRECT, EL2N, EPS, MARGIN, TARGET_PROB, topk_index_dtype

from tests.support.helpers import backend_cases, clone, make_state

REF_UPDATE, REF_STEP = torch.ops.tdds.update, torch.ops.tdds.epoch_step
STORAGE = [torch.float32, torch.bfloat16, torch.float16]
LOGITS = [torch.float32, torch.float16, torch.bfloat16]


class Case:
    """One (device, backend) pair: its ops, and whether shapes must stay small (interpreted Triton)."""

    def __init__(self, device, backend):
        self.device, self.backend = device, backend
        b = registry.resolve(backend, torch.device(device))
        self.update, self.epoch_step = b.update, b.epoch_step
        # The compressed-row update (prev_topk, docs/design.md §2.1), where the backend has one.
        self.topk_reason = registry.unavailable_reason(backend, torch.device(device), topk=True)
        self.update_topk = None if self.topk_reason else registry.resolve(backend, torch.device(device), True).update
        self.small = device == "cpu" and backend == "triton"
        # Variants of the update launcher that take another code path for the same contract.
        self.updates = [("default", self.update)]
        if backend == "triton":
            import tdds_kernels.ops.triton as tt

            self.updates.append(("chunk256", functools.partial(tt.update, block=256)))
        self.topk_updates = [("default", self.update_topk)]
        if backend == "triton" and self.update_topk is not None:
            self.topk_updates.append(("chunk16", functools.partial(tt.update_topk, block=16)))

    def need_topk(self):
        if self.update_topk is None:
            pytest.skip(self.topk_reason)
        return self.update_topk

    def to(self, *tensors):
        return tuple(t.to(self.device, copy=True) for t in tensors)  # copies: the originals stay the oracle's


def pairs(name: str, exclude=()):
    """A pytest fixture `name` over the (device, backend) pairs, giving a Case; a test module
    assigns it to that name (`case = pairs("case")`). `exclude`: ids to leave out."""

    @pytest.fixture(params=backend_cases(exclude=exclude), name=name)
    def fixture(request):
        return Case(*request.param)

    return fixture


# The two fixtures the scenarios take: `case` every pair; `other` every pair but the CPU
# reference, which is the oracle they are compared with.
CASE, OTHER = {"name": "case"}, {"name": "other", "exclude": ("cpu-reference",)}


# ------------------------------------------------------------------ state and comparison
def cpu(ts):
    return tuple(t.cpu() for t in ts)


def tolerances(storage):
    # Two float32 implementations of exp/log differ by a few ulp; a reduced storage dtype can
    # round such a difference to one unit of its last place.
    return {
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.bfloat16: dict(rtol=8e-3, atol=1e-5),
        torch.float16: dict(rtol=1e-3, atol=1e-5),
    }[storage]


RING_TOL = dict(rtol=1e-5, atol=1e-5)  # d in float32: exp/log rounding and summation order


def assert_update_state(out, ref, storage=torch.float32):
    prev_o, seen_o, ring_o, counters_o = cpu(out)
    prev_r, seen_r, ring_r, counters_r = cpu(ref)
    assert torch.equal(seen_o, seen_r), "seen"
    assert counters_o.tolist() == counters_r.tolist(), "counters"
    torch.testing.assert_close(prev_o.float(), prev_r.float(), **tolerances(storage), msg=lambda m: f"prev: {m}")
    torch.testing.assert_close(ring_o, ring_r, equal_nan=True, **RING_TOL, msg=lambda m: f"ring: {m}")


def run_update(update, logits, index, state):
    """(backend state, CPU reference state) after one update of copies of (prev, seen, ring,
    counters). Every backend applies the first usable row of a sample in batch order (docs/design.md
    §3), so the states must agree whatever the kernel's execution order."""
    out = clone(state)
    update(logits, index, *out)
    ref = clone(cpu(state))
    REF_UPDATE(logits.cpu(), index.cpu(), *ref)
    return out, ref


# ------------------------------------------------------------------ compressed previous row
REF_UPDATE_TOPK = torch.ops.tdds.update_topk


def make_topk_state(n, c, w, k, storage=torch.float32, epoch=1, seed=0):
    """make_state with its previous rows compressed to k classes: (prev_val, prev_idx, prev_rest,
    seen, ring, counters)."""
    prev, seen, ring, _, counters = make_state(n, c, w, storage, epoch, seed)
    p = prev.float().exp()
    val, idx, rest = reference_topk.compress(p, torch.log(p + EPS), k)
    return val.to(storage), idx.to(topk_index_dtype(c)), rest.to(storage), seen, ring, counters


def run_update_topk(update, logits, index, state):
    out = clone(state)
    update(logits, index, *out)
    ref = clone(cpu(state))
    REF_UPDATE_TOPK(logits.cpu(), index.cpu(), *ref)
    return out, ref


def assert_topk_state(out, ref, storage=torch.float32):
    val_o, idx_o, rest_o, *rest_of_o = cpu(out)
    val_r, idx_r, rest_r, *rest_of_r = cpu(ref)
    assert torch.equal(idx_o, idx_r), "prev_idx"  # the kept set and its order are unique
    for name, a, b in (("prev_val", val_o, val_r), ("prev_rest", rest_o, rest_r)):
        torch.testing.assert_close(a.float(), b.float(), **tolerances(storage), msg=lambda m, n=name: f"{n}: {m}")
    seen_o, ring_o, counters_o = rest_of_o
    seen_r, ring_r, counters_r = rest_of_r
    assert torch.equal(seen_o, seen_r) and counters_o.tolist() == counters_r.tolist()
    torch.testing.assert_close(ring_o, ring_r, equal_nan=True, **RING_TOL, msg=lambda m: f"ring: {m}")


# ------------------------------------------------------------------ targets: baselines' row stats
ROW_TOL = {  # correct is exact; NaN (rows not applied, bad targets) must match exactly
    "el2n": dict(rtol=1e-5, atol=1e-6),
    "margin": dict(rtol=1e-5, atol=1e-5),
    "target_prob": dict(rtol=1e-5, atol=1e-7),
}


def targets_batch(n, c, b, seed, index_dtype=torch.int64, target_dtype=torch.int64):
    """(logits, index, targets) with every row kind the row stats must handle: duplicates (in the
    batch and of samples seen this epoch), out-of-range indices, non-finite rows, targets outside
    [0, C), ties for the largest logit (argmax takes the lowest class), a one-hot-like row whose
    other classes underflow exp, a row whose largest logit is far above its first, and correct
    rows (target = argmax)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(-1, n + 1, (b,), generator=g)
    logits = torch.randn(b, c, generator=g) * 4
    targets = torch.randint(0, c, (b,), generator=g)
    kinds = torch.randint(0, 8, (b,), generator=g)
    best = logits.argmax(dim=1)
    targets = torch.where(kinds == 0, best, targets)  # correct
    if c > 1:
        tie = (kinds == 1).nonzero().squeeze(1)
        logits[tie, (best[tie] + 1) % c] = logits[tie, best[tie]]  # tied with the largest
        targets[tie] = torch.where(torch.rand(tie.numel(), generator=g) < 0.5, best[tie], (best[tie] + 1) % c)
    targets[kinds == 2] = c  # outside [0, C)
    targets[kinds == 3] = -1
    logits[kinds == 4, 0] = float("nan")
    big = (kinds == 5).nonzero().squeeze(1)
    logits[big] = -200.0
    logits[big, targets[big]] = 200.0
    # the largest logit 50 above the first: exp(x − x[0]) reaches e^50 (its square overflows float)
    far = (kinds == 6).nonzero().squeeze(1)
    logits[far, targets[far]] = logits[far, 0] + 50.0
    return logits, index.to(index_dtype), targets.to(target_dtype)


def assert_row_stats(out, ref):
    out = out.cpu()
    assert torch.equal(out.isnan(), ref.isnan()), "row_stats: NaN pattern (rows applied / targets usable)"
    assert torch.equal(out[:, CORRECT].nan_to_num(-1), ref[:, CORRECT].nan_to_num(-1)), "row_stats: correct"
    for col, name in ((EL2N, "el2n"), (MARGIN, "margin"), (TARGET_PROB, "target_prob")):
        torch.testing.assert_close(
            out[:, col], ref[:, col], equal_nan=True, **ROW_TOL[name], msg=lambda m, n=name: f"row_stats {n}: {m}"
        )
