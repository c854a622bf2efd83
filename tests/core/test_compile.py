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


# Each kernel variant the launchers can pick, for a Hopper target: Triton's own compiler (ttir →
# ttgir → llir → ptx → cubin with its bundled ptxas) runs without a GPU, so CI catches what the
# interpreter forgives (loop-carried types, layouts, unsupported ops). Run in a subprocess: the
# kernels here were defined under TRITON_INTERPRET=1.
AOT_SCRIPT = r"""
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tdds_kernels.ops.triton.epoch_step import _epoch_step_kernel
from tdds_kernels.ops.triton.update import _config, _update_kernel
assert isinstance(_update_kernel, triton.JITFunction)
target = GPUTarget("cuda", 90, 32)
# Without targets, targets_ptr / stats_ptr are constexpr None (what a launch with None gives);
# with them, the HAS_TARGETS variant for int64 and int32 labels.
TARGETS = (({"targets_ptr": "constexpr", "stats_ptr": "constexpr"}, False),
           ({"targets_ptr": "*i64", "stats_ptr": "*fp32"}, True),
           ({"targets_ptr": "*i32", "stats_ptr": "*fp32"}, True))
for (tsig, has), (z, p) in itertools.product(TARGETS, (("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"))):
    for c in (10, 1000, 32000):
        block, single, warps = _config(c)
        sig = {"logits_ptr": "*" + z, "logits_stride": "i64", "sorted_ptr": "*i64",
               "order_ptr": "*i64", "prev_ptr": "*" + p, "seen_ptr": "*i32", "ring_ptr": "*fp32",
               "counters_ptr": "*i64", **tsig, "B": "i32", "N": "i32", "C": "i32", "W1": "i32",
               "SINGLE": "constexpr", "BLOCK": "constexpr", "HAS_TARGETS": "constexpr"}
        consts = {(14,): single, (15,): block, (16,): has}
        if not has:
            consts.update({(8,): None, (9,): None})
        k = triton.compile(ASTSource(_update_kernel, sig, consts), target=target, options={"num_warps": warps})
        assert "ld.local" not in k.asm["ptx"], ("local memory", z, p, c, has)
from tdds_kernels.ops.triton.update_topk import _update_topk_kernel
for (tsig, has), (z, p) in itertools.product(TARGETS, (("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"))):
    for c, ids, kk in ((10, "i16", 4), (1000, "i16", 16), (32000, "i16", 128), (40000, "i32", 8)):
        block, _, warps = _config(c)
        sig = {"logits_ptr": "*" + z, "logits_stride": "i64", "sorted_ptr": "*i64",
               "order_ptr": "*i64", "val_ptr": "*" + p, "idx_ptr": "*" + ids, "rest_ptr": "*" + p,
               "seen_ptr": "*i32", "ring_ptr": "*fp32", "counters_ptr": "*i64", **tsig, "B": "i32",
               "N": "i32", "C": "i32", "K": "i32", "W1": "i32",
               "BLOCK": "constexpr", "KBLOCK": "constexpr", "HAS_TARGETS": "constexpr"}
        consts = {(17,): block, (18,): triton.next_power_of_2(kk), (19,): has}
        if not has:
            consts.update({(10,): None, (11,): None})
        k = triton.compile(ASTSource(_update_topk_kernel, sig, consts), target=target, options={"num_warps": warps})
        assert "ld.local" not in k.asm["ptx"], ("local memory, top-K", z, p, c, has)
sig = {"seen_ptr": "*i32", "ring_ptr": "*fp32", "score_ptr": "*fp32", "counters_ptr": "*i64",
       "N": "i32", "W1": "i32", "keep": "fp32", "decay": "fp32",
       "BLOCK_N": "constexpr", "BLOCK_W": "constexpr"}
for bw in (1, 16, 32):
    triton.compile(ASTSource(_epoch_step_kernel, sig, {(8,): max(32, 4096 // bw), (9,): bw}),
                   target=target, options={"num_warps": 8})
print("ok")
"""


def test_triton_kernels_compile_for_hopper():
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    if r.returncode and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


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
