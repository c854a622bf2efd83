"""Raw ops never crash (issue 24): every op on every CPU backend, fed fuzzed arguments.

Each case is one call of an op (update, update_topk, epoch_step, fold_baselines) with arguments
built from drawn sizes (B, C, N, W - 1, K including 0), dtypes and epochs, then up to two
arguments spoiled: another shape, another dtype, a strided (non-contiguous) view, another device
(meta; the GPU where there is one) or one of targets / row_stats left out. The same call goes to
every backend that implements the op on CPU (reference, the C++ extension, Triton interpreted).
The contract (ops/checks.py, csrc/op_contract.h):
  - no backend crashes; each either runs or raises one ValueError line naming the op;
  - a rejected call changes nothing;
  - every backend accepts or rejects the same call, and what they compute from an accepted one
    agrees with the reference (the conformance suite checks the values closely; here loosely).

Hypothesis runs in a child process that prints each case before calling it, so a segfault fails
this test with the case that caused it instead of killing pytest. Run the file directly
(`python tests/ops/test_op_fuzz.py`, TDDS_OP_FUZZ_EXAMPLES=N for more) to fuzz longer.
"""

import ast
import collections
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("TDDS_OP_FUZZ_EXAMPLES", "400"))  # ~15 s on 2 loaded cores
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
INDICES = [torch.int64, torch.int32]
DTYPES = [*FLOATS, torch.float64, *INDICES, torch.int16, torch.uint8, torch.bool]
ARGS = {
    "update": ("logits", "index", "prev", "seen", "ring", "counters", "targets", "row_stats"),
    "update_topk": ("logits", "index", "prev_val", "prev_idx", "prev_rest", "seen", "ring", "counters", "targets")
    + ("row_stats",),
    "epoch_step": ("seen", "ring", "score", "counters"),
    "fold_baselines": ("row_stats", "index", "packed", "epoch"),
}
MUTATED = {
    "update": ("prev", "seen", "ring", "counters", "row_stats"),
    "update_topk": ("prev_val", "prev_idx", "prev_rest", "seen", "ring", "counters", "row_stats"),
    "epoch_step": ("ring", "score", "counters"),
    "fold_baselines": ("packed",),
}
OUTCOMES = collections.Counter()  # (op, "ran" / "rejected"): the child prints them at the end
VALID_EPOCHS = [0, 1, 2, 3, 7]
BAD_EPOCHS = [-1, -5, 2**31 - 1, 2**33]
OTHER_DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])  # a tensor moved off the CPU


def implementations(op):
    """(backend, op overload packet) of every CPU backend implementing `op`."""
    from tdds_kernels.ops import registry

    cpu = torch.device("cpu")
    if op == "fold_baselines":
        fold = registry.fold_op(cpu)
        return [("reference", torch.ops.tdds.fold_baselines)] + (
            [("cpu", fold)] if fold is not torch.ops.tdds.fold_baselines else []
        )
    topk = op == "update_topk"
    out = []
    for name in registry.available(cpu, topk=topk):
        b = registry.resolve(name, cpu, topk=topk)
        out.append((name, b.epoch_step if op == "epoch_step" else b.update))
    return out


@st.composite
def calls(draw):
    """(op, {arg: (shape, dtype, strided, device) or None}, scalars, seed)."""
    op = draw(st.sampled_from(sorted(ARGS)))
    b, c, n = draw(st.integers(0, 5)), draw(st.integers(0, 6)), draw(st.integers(0, 5))
    w1, k, window = draw(st.integers(0, 3)), draw(st.integers(0, 7)), draw(st.integers(0, 3))
    storage = draw(st.sampled_from(FLOATS))
    valid = {
        "logits": ((b, c), draw(st.sampled_from(FLOATS))),
        "index": ((b,), draw(st.sampled_from(INDICES))),
        "prev": ((n, c), storage),
        "prev_val": ((n, k), storage),
        "prev_idx": ((n, k), draw(st.sampled_from([torch.int16, torch.int32]))),
        "prev_rest": ((n,), storage),
        "seen": ((n,), torch.int32),
        "ring": ((n, w1), torch.float32),
        "counters": ((5,), torch.int64),
        "score": ((n,), torch.float32),
        "targets": ((b,), draw(st.sampled_from(INDICES))),
        "row_stats": ((b, 4), torch.float32),
        "packed": ((n + 1, 6 + window), torch.float64),
        "epoch": ((), torch.int64),
    }
    args = {a: (*valid[a], False, "cpu") for a in ARGS[op]}
    if op.startswith("update") and not draw(st.booleans()):
        args["targets"] = args["row_stats"] = None
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(ARGS[op]))
        if args[name] is None:
            continue
        shape, dtype, strided, device = args[name]
        kind = draw(st.sampled_from(["shape", "dtype", "strided", "device", "drop"]))
        if kind == "shape":
            shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
        elif kind == "dtype":
            dtype = draw(st.sampled_from(DTYPES))
        elif kind == "strided":
            strided = True
        elif kind == "device":
            device = draw(st.sampled_from(OTHER_DEVICES))
        elif name in ("targets", "row_stats"):
            args[name] = None
            continue
        args[name] = (shape, dtype, strided, device)
    epoch = draw(st.sampled_from(VALID_EPOCHS) | st.sampled_from(BAD_EPOCHS))
    scalars = {
        "epoch": epoch,
        "decay": draw(st.sampled_from([0.0, 0.5, 1.0])),
        "el2n_epoch": draw(st.sampled_from([-1, 0, 2])),
    }
    return op, args, scalars, draw(st.integers(0, 2**31 - 1))


def values(name, shape, scalars, classes, samples, g):
    """float64 values of argument `name` (cast by the caller): what a tracker would hold."""
    epoch = scalars["epoch"]
    if name == "logits":
        return torch.randn(shape, generator=g, dtype=torch.float64) * 3
    if name in ("index", "targets"):
        hi = samples + 2 if name == "index" else classes + 1
        return torch.randint(-1, hi, shape, generator=g).double()
    if name in ("prev", "prev_val", "prev_rest"):
        return torch.randn(shape, generator=g, dtype=torch.float64) - 3
    if name == "prev_idx":  # distinct valid class ids per row where the shape allows
        if len(shape) == 2 and shape[1] <= classes:
            return torch.rand(shape[0], classes, generator=g).argsort(dim=1)[:, : shape[1]].double()
        return torch.randint(0, max(classes, 1), shape, generator=g).double()
    if name == "seen":
        return torch.randint(-1, 4, shape, generator=g).double()
    if name == "ring":
        r = torch.rand(shape, generator=g, dtype=torch.float64) * 5
        return r.masked_fill(torch.rand(shape, generator=g) < 0.3, float("nan"))
    if name == "counters":
        v = torch.tensor([3, 5, 7, 11, epoch], dtype=torch.float64)
        return v if tuple(shape) == (5,) else torch.full(shape, float(epoch), dtype=torch.float64)
    if name == "epoch":
        return torch.full(shape, float(epoch), dtype=torch.float64)
    if name == "row_stats":
        s = torch.rand(shape, generator=g, dtype=torch.float64)
        if len(shape) == 2 and shape[1] >= 1:  # correct: 0, 1 or NaN (no stats)
            s[:, 0] = torch.randint(0, 3, (shape[0],), generator=g).double().masked_fill_(s[:, 1] < 0.3, float("nan"))
        return s
    return torch.rand(shape, generator=g, dtype=torch.float64)  # score, packed


def build(op, args, scalars, seed):
    """The call's arguments, built afresh (the same tensors for every backend)."""
    g = torch.Generator().manual_seed(seed)
    classes = args["logits"][0][1] if op.startswith("update") and args["logits"] and len(args["logits"][0]) == 2 else 0
    samples = args["seen"][0][0] if "seen" in args and args["seen"] and len(args["seen"][0]) else 3
    out = {}
    for name, spec in args.items():
        if spec is None:
            out[name] = None
            continue
        shape, dtype, strided, device = spec
        v = values(name, shape, scalars, classes, samples, g)
        if dtype in INDICES + [torch.int16, torch.uint8] or dtype == torch.bool:
            v = v.nan_to_num(0).clamp(-(2**40), 2**40)
        if dtype == torch.uint8:
            v = v.clamp(min=0)
        t = v.to(dtype)
        if strided and t.dim():  # the same values as a view with every other element of its last dim
            t = torch.stack([t, torch.zeros_like(t)], dim=-1).flatten(-2)[..., ::2]
        out[name] = t.to(device)
    extra = {"epoch_step": ("decay",), "fold_baselines": ("el2n_epoch",)}.get(op, ())
    return [out[a] for a in ARGS[op]] + [scalars[s] for s in extra]


def snapshot(op, call_args):
    return {
        name: t.clone()
        for name, t in zip(ARGS[op], call_args)
        if name in MUTATED[op] and isinstance(t, torch.Tensor) and t.device.type != "meta"
    }


def same(a, b, exact):
    if a.dtype.is_floating_point and not exact:
        tol = 1e-2 if a.dtype in (torch.float16, torch.bfloat16) else 1e-4
        return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol, equal_nan=True)
    return torch.equal(a.double().nan_to_num(-7), b.double().nan_to_num(-7))


def check_call(op, args, scalars, seed):
    results = {}
    for backend, fn in implementations(op):
        call_args = build(op, args, scalars, seed)
        before = snapshot(op, call_args)
        print(f"CASE {backend} {op} {args} {scalars} seed={seed}", flush=True)
        try:
            fn(*call_args)
        except ValueError as exc:
            msg = str(exc).strip()
            assert "\n" not in msg, f"{backend}: a multi-line error: {msg!r}"
            assert msg.split(":")[0].startswith(op), f"{backend}: the error does not name the op: {msg!r}"
            after = snapshot(op, call_args)
            for name, t in before.items():
                assert same(after[name], t, exact=True), f"{backend}: a rejected call changed {name}: {msg}"
            results[backend] = ("rejected", msg)
            continue
        results[backend] = ("ran", snapshot(op, call_args))
    kinds = {backend: r[0] for backend, r in results.items()}
    assert len(set(kinds.values())) == 1, f"backends disagree on accepting the call: {results}"
    OUTCOMES[op, kinds["reference"]] += 1
    ref = results["reference"]
    if ref[0] == "ran":
        for backend, (_, state) in results.items():
            for name, t in state.items():
                if name == "prev_idx":  # near-ties may order the kept classes differently
                    continue
                expected = ref[1][name]
                if name == "packed":  # the spare last row takes rows without stats: never read
                    t, expected = t[:-1], expected[:-1]
                assert same(t, expected, exact=not t.dtype.is_floating_point), f"{backend}: {name}"


def known(op, b=3, c=4, n=5, w1=2, k=2, epoch=1, targets=False):
    """A case of the calls() shape, for the crashes found before (always run, then the fuzz)."""
    f32, i64 = torch.float32, torch.int64
    shapes = {
        "logits": ((b, c), f32),
        "index": ((b,), i64),
        "prev": ((n, c), f32),
        "prev_val": ((n, k), f32),
        "prev_idx": ((n, k), torch.int16),
        "prev_rest": ((n,), f32),
        "seen": ((n,), torch.int32),
        "ring": ((n, w1), f32),
        "counters": ((5,), i64),
        "score": ((n,), f32),
        "targets": ((b,), i64),
        "row_stats": ((b, 4), f32),
        "packed": ((n + 1, 6 + w1), torch.float64),
        "epoch": ((), i64),
    }
    args = {a: (*shapes[a], False, "cpu") for a in ARGS[op]}
    if op.startswith("update") and not targets:
        args["targets"] = args["row_stats"] = None
    return op, args, {"epoch": epoch, "decay": 0.5, "el2n_epoch": -1}, 0


@example(case=known("update", c=0))  # update_ext segfaulted at C = 0 (issue 24)
@example(case=known("update_topk", c=0, k=0, targets=True))
@example(case=known("update", w1=0))
@example(case=known("epoch_step", epoch=-5))  # interpreted Triton wrote before the ring
@example(case=known("update", epoch=-3))
@example(case=known("fold_baselines", epoch=-1))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(case=calls())
def fuzz(case):
    check_call(*case)


@pytest.mark.filterwarnings("ignore")
def test_raw_ops_never_crash():
    """The fuzz in a child process: a crash fails the test and names the case that caused it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600, check=False)
    cases = [line for line in proc.stdout.splitlines() if line.startswith("CASE ")]
    if proc.returncode < 0:
        pytest.fail(f"the child died of signal {-proc.returncode} in: {cases[-1] if cases else '?'}")
    assert proc.returncode == 0, f"{proc.stderr[-6000:]}"
    # Not a vacuous fuzz: every op was both run and refused a fair number of times.
    outcomes = ast.literal_eval(proc.stdout.splitlines()[-1].removeprefix("OUTCOMES "))
    for op in ARGS:
        for kind in ("ran", "rejected"):
            assert outcomes.get((op, kind), 0) >= EXAMPLES // 40, (op, kind, outcomes)


if __name__ == "__main__":
    torch.set_num_threads(1)
    fuzz()
    print("OUTCOMES", dict(OUTCOMES), flush=True)
