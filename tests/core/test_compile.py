"""torch.compile: a training step that calls tracker.update compiles as one graph.

The ops are custom ops with their mutated arguments marked and fake kernels (tdds_kernels/ops/schema.py), and the
epoch lives on the device (counters[EPOCH]), so the step needs no graph break and no recompile
when the epoch advances. Checked on CPU with the reference backend, and with the Triton backend
under the interpreter (the same op registration serves CUDA).
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import tdds_kernels as tk
from tdds_kernels.ops import registry as backends

N, C, D, B = 24, 5, 8, 6


def make_step(model, tracker, targets=False):
    def step(x, y, idx):
        logits = model(x)
        tracker.update(logits.detach(), idx, targets=y if targets else None)
        return F.cross_entropy(logits, y)

    return step


def batches(epochs):
    torch.manual_seed(1)
    x, y = torch.randn(N, D), torch.randint(0, C, (N,))
    for _ in range(epochs):
        order = torch.randperm(N)
        yield [(x[i], y[i], i) for i in order.split(B)]


def train(backend, compile_backend=None, epochs=4, targets=False):
    """Trains a linear model for `epochs`, eager or compiled; returns the tracker."""
    torch.manual_seed(0)
    model = torch.nn.Linear(D, C)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = tk.TDDSTracker(N, C, window=3, trajectory_len=None, backend=backend, baseline_options={"window": 2})
    step = make_step(model, tracker, targets)
    if compile_backend is not None:
        step = torch.compile(step, backend=compile_backend, fullgraph=True)
    for e, epoch in enumerate(batches(epochs)):
        # After the first epoch every call must reuse the compiled graph.
        with torch._dynamo.config.patch(error_on_recompile=e > 0):
            for x, y, idx in epoch:
                opt.zero_grad()
                step(x, y, idx).backward()
                opt.step()
        tracker.end_epoch()
    return tracker


def need(backend):
    reason = backends.unavailable_reason(backend, torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("targets", [False, True])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_training_step_has_no_graph_break(backend, targets):
    # With targets the op writes the baselines' row stats and the fold is fixed-shape tensor
    # code: still one graph.
    need(backend)
    torch._dynamo.reset()
    model = torch.nn.Linear(D, C)
    tracker = tk.TDDSTracker(N, C, window=3, backend=backend)
    x, y, idx = torch.randn(B, D), torch.randint(0, C, (B,)), torch.arange(B)
    explanation = torch._dynamo.explain(make_step(model, tracker, targets))(x, y, idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # The op is in the graph, not run around it.
    ops = [n.target for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"]
    suffix = {"reference": "", "cpu": "_ext", "triton": "_triton"}[backend]
    assert (
        getattr(torch.ops.tdds, "update" + suffix) in ops or getattr(torch.ops.tdds, "update" + suffix).default in ops
    ), ops


@pytest.mark.parametrize(
    "backend,compile_backend", [("reference", "inductor"), ("reference", "aot_eager"), ("triton", "aot_eager")]
)
def test_compiled_training_matches_eager(backend, compile_backend):
    need(backend)
    torch._dynamo.reset()
    eager = train(backend)
    compiled = train(backend, compile_backend)
    torch.testing.assert_close(compiled.scores(), eager.scores(), atol=1e-5, rtol=1e-5)
    assert compiled.stats == eager.stats
    assert (compiled.scores() > 0).any()  # windows folded: the check is not vacuous


@pytest.mark.parametrize("backend,compile_backend", [("reference", "inductor"), ("cpu", "inductor")])
def test_compiled_training_with_targets_matches_eager(backend, compile_backend):
    need(backend)
    torch._dynamo.reset()
    eager = train(backend, targets=True)
    compiled = train(backend, compile_backend, targets=True)
    torch.testing.assert_close(compiled.scores(), eager.scores(), atol=1e-5, rtol=1e-5)
    got, want = compiled.baseline_scores(), eager.baseline_scores()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, equal_nan=True, msg=name)
    assert (want["dyn_unc"] > 0).any() and want["el2n"].isfinite().all()  # not vacuous


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
def test_triton_on_cuda_under_inductor(storage):
    # The compiled (not interpreted) Triton kernels inside an Inductor graph, against eager.
    if backends.unavailable_reason("triton", torch.device("cuda")) is not None:
        pytest.skip(backends.unavailable_reason("triton", torch.device("cuda")))
    torch._dynamo.reset()
    kw = dict(
        num_samples=64,
        num_classes=1000,
        window=3,
        trajectory_len=None,
        device="cuda",
        storage_dtype=storage,
        backend="triton",
    )
    eager, compiled = tk.TDDSTracker(**kw), tk.TDDSTracker(**kw)
    step = torch.compile(lambda z, i: compiled.update(z, i), fullgraph=True)
    base = torch.randn(64, 1000, device="cuda")
    for e in range(4):
        base += torch.randn_like(base)
        with torch._dynamo.config.patch(error_on_recompile=e > 0):
            for i in torch.randperm(64, device="cuda").split(16):
                eager.update(base[i], i)
                step(base[i], i)
        eager.end_epoch()
        compiled.end_epoch()
    torch.testing.assert_close(compiled.scores(), eager.scores(), atol=0, rtol=0)


# What runs, compiled for a Hopper target without a GPU: the launchers themselves run on CPU
# tensors with their kernels replaced by recorders, and each recorded launch is specialised by
# Triton's own launch-time rule (native_specialize_impl: int32 or int64 scalars, 16-divisibility
# of scalars and pointers, scalars equal to 1 and None arguments as constants), then compiled
# by Triton's compiler (ttir → ttgir → llir → ptx → cubin with its bundled ptxas). So CI
# compiles the variants a GPU run builds (32-bit and 64-bit sort keys, int32 and int64 targets,
# a batch of one, W − 1 = 1, a row stride that is not C, C = 10 … 40,000, top-K K = 128 with
# targets) and catches what the interpreter forgives. ptxas's report on each cubin (its -v
# output, which Triton prints with TRITON_DUMP_PTXAS_LOG=1; a fresh cache, so ptxas runs) must
# show no spill stores or loads. Run in a subprocess: the kernels here were defined under
# TRITON_INTERPRET=1.
AOT_SCRIPT = r"""
import contextlib, importlib, io, json, re
import torch, triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from tdds_kernels.ops.schema import NUM_SLOTS, ROW_STATS, topk_index_dtype

# The modules (the package's attributes of these names are the launcher functions).
E, U, T = (importlib.import_module("tdds_kernels.ops.triton." + m) for m in ("epoch_step", "update", "update_topk"))
launches = []


class Recorder:
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        def launch(*args, num_warps=4, **consts):
            launches.append((self.fn, args, consts, num_warps))
        return launch


# The launchers check their arguments first (ops/checks.py); these stand-ins (stride-0 rows, a
# one-element seen) are refused by design, and only the launches' specialisations matter here.
checks = importlib.import_module("tdds_kernels.ops.checks")
for name in ("update", "update_topk", "epoch_step"):
    setattr(checks, name, lambda *args, **kwargs: None)

KERNELS = ((U, "_update_kernel"), (U, "_sort_keys_kernel"), (T, "_update_topk_kernel"), (E, "_epoch_step_kernel"))
for mod, name in KERNELS:
    setattr(mod, name, Recorder(getattr(mod, name)))
assert isinstance(U._update_kernel.fn, triton.JITFunction)

DT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rows(n, c, dtype):  # a (n, c) tensor without n rows of memory: only shape[0] and the pointer count
    return torch.empty(1, c, dtype=dtype).expand(n, c)


def batch(b, c, z, index_dtype, targets, stride=None):
    logits = torch.empty(b, stride or c, dtype=DT[z])[:, :c]
    index = torch.zeros(b, dtype=index_dtype)
    extra = (torch.zeros(b, dtype=targets), torch.empty(b, len(ROW_STATS))) if targets else (None, None)
    return logits, index, extra


def update(b, c, z, p, n=1_281_167, w1=9, index_dtype=torch.int64, targets=None, stride=None):
    logits, index, (y, st) = batch(b, c, z, index_dtype, targets, stride)
    U.update(logits, index, rows(n, c, DT[p]), torch.empty(1, dtype=torch.int32), rows(n, w1, torch.float32),
             torch.zeros(NUM_SLOTS, dtype=torch.int64), y, st)


def update_topk(b, c, z, p, k, n=1_281_167, targets=None):
    logits, index, (y, st) = batch(b, c, z, torch.int64, targets)
    seen, ring = torch.empty(1, dtype=torch.int32), rows(n, 9, torch.float32)
    T.update_topk(logits, index, rows(n, k, DT[p]), rows(n, k, topk_index_dtype(c)), torch.empty(1, dtype=DT[p]),
                  seen, ring, torch.zeros(NUM_SLOTS, dtype=torch.int64), y, st)


PAIRS = (("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"))
for z, p in PAIRS:
    for c in (10, 1000, 1024, 8193, 21841, 32000):
        update(8192, c, z, p)
        update(8192, c, z, p, targets=torch.int64)
for c in (1000, 32000):
    update(1000, c, "bf16", "bf16", targets=torch.int32)
for z, p in PAIRS[:2]:
    update(1, 1000, z, p)  # a batch of one: B is a constant
    update(1000, 1000, z, p, index_dtype=torch.int32)
    update(1000, 1000, z, p, n=2**31)  # N + B >= 2^31: 64-bit keys, N an int64
    update(8192, 1000, z, p, n=2**31, index_dtype=torch.int32)
    update(8192, 1000, z, p, stride=1003)  # rows of a wider tensor
    update(8192, 1000, z, p, w1=1)  # window 2: W - 1 is a constant
for z, p in PAIRS:
    for c, k in ((10, 4), (1000, 16), (21841, 128), (32000, 128), (40000, 8)):
        update_topk(8192, c, z, p, k)
        update_topk(8192, c, z, p, k, targets=torch.int64)
update_topk(1000, 21841, "bf16", "bf16", 128, targets=torch.int32)
for n, w1 in ((1_281_167, 1), (1_281_167, 9), (100_000, 16), (1000, 32)):
    E.epoch_step(torch.empty(1, dtype=torch.int32).expand(n), rows(n, w1, torch.float32),
                 torch.empty(1).expand(n), torch.zeros(NUM_SLOTS, dtype=torch.int64), 0.9)


def specialise(fn, args, consts):
    sig, constexprs, attrs = {}, {}, {}
    for i, (name, a) in enumerate(zip(fn.arg_names, args)):
        ty, key = native_specialize_impl(BaseBackend, a, False, True, True)
        sig[name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = key
        elif key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    for name, v in consts.items():
        sig[name] = "constexpr"
        constexprs[(fn.arg_names.index(name),)] = v
    return sig, constexprs, attrs


target = GPUTarget("cuda", 90, 32)
done, report = set(), []
for fn, args, consts, warps in launches:
    sig, constexprs, attrs = specialise(fn, args, consts)
    key = (fn.__name__, repr(sig), repr(sorted(constexprs.items())), repr(attrs), warps)
    if key in done:
        continue
    done.add(key)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target, options={"num_warps": warps})
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
    assert spills, ("no ptxas report", fn.__name__, log.getvalue()[-2000:])
    variant = {n: v for n, v in sig.items() if v != "constexpr"}
    variant.update({fn.arg_names[i[0]]: v for i, v in constexprs.items()}, num_warps=warps)
    report.append({"kernel": fn.__name__, "variant": repr(variant),
                   "spilled": sum(int(a) + int(b) for a, b in spills)})
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def hopper_variants(tmp_path_factory):
    """[{kernel, variant, spilled bytes}] of every variant AOT_SCRIPT compiled (one run)."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(
        os.environ,
        TRITON_INTERPRET="0",
        TRITON_DEFAULT_FP_FUSION="1",
        TRITON_DUMP_PTXAS_LOG="1",
        TRITON_CACHE_DIR=str(tmp_path_factory.mktemp("triton_cache")),  # empty: ptxas runs for every variant
    )
    r = subprocess.run([sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_triton_kernels_compile_for_hopper(hopper_variants):
    kernels = {v["kernel"] for v in hopper_variants}
    assert kernels == {"_update_kernel", "_sort_keys_kernel", "_update_topk_kernel", "_epoch_step_kernel"}
    update = [v["variant"] for v in hopper_variants if v["kernel"] == "_update_kernel"]
    musts = ("'sorted_ptr': '*i32'", "'sorted_ptr': '*i64'", "'N': 'i64'", "'B': 1", "'W1': 1", "'targets_ptr': '*i32'")
    for must in musts:
        assert any(must in v for v in update), must
    spilled = [v for v in hopper_variants if v["spilled"] and v["kernel"] != "_update_topk_kernel"]
    assert not spilled, spilled


@pytest.mark.xfail(
    strict=True,
    reason="update_topk (ops/triton/update_topk.py) spills 8-132 bytes on sm_90 (C = 1000 K = 16; C = 32000 "
    "K = 128 16-bit; C = 40000 K = 8 with targets: 128 registers, 36 + 36 bytes at 8 warps, fp32); a warp "
    "per 64 classes moved the spill to C = 21841 K = 128 fp32 (136 bytes), a smaller d-pass histogram "
    "changed nothing; strict: this fails once it no longer spills, so the mark is removed then",
)
def test_triton_topk_kernel_does_not_spill(hopper_variants):
    spilled = [v for v in hopper_variants if v["spilled"] and v["kernel"] == "_update_topk_kernel"]
    assert not spilled, spilled


def test_a_forgotten_end_epoch_under_compile_shows_in_the_stats_not_as_a_warning():
    # docs/design.md §3: the forgotten-end_epoch() check is host bookkeeping, kept out of
    # compiled graphs; eager updates warn, compiled ones do not, and both count the duplicates.
    torch._dynamo.reset()
    results = {}
    for mode in ("eager", "compiled"):
        tracker = tk.TDDSTracker(N, C, window=3, backend="reference")
        record = lambda logits, idx, tracker=tracker: tracker.update(logits, idx)  # noqa: E731
        if mode == "compiled":
            record = torch.compile(record, backend="aot_eager", fullgraph=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):  # three epochs' rows, end_epoch() forgotten
                for idx in torch.randperm(N).split(B):
                    record(torch.randn(len(idx), C), idx)
        forgot = [w for w in caught if "did you forget end_epoch()" in str(w.message)]
        results[mode] = (len(forgot), tracker.stats["duplicates"])
    assert results["eager"][0] >= 1 and results["compiled"][0] == 0
    assert results["eager"][1] == results["compiled"][1] == 2 * N
