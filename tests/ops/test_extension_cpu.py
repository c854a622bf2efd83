"""What is particular to the C++ extension's CPU kernels (the contract itself is checked by
tests/ops/test_conformance.py): it is the backend "cpu" resolves to, its argument checks name
the argument, the per-ISA variants picked at run time, and in-batch duplicates over threads."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import tdds_kernels as tk

from helpers import probability_sweep

if os.environ.get("TDDS_NO_EXT") == "1":
    pytest.skip("TDDS_NO_EXT=1: the C++ extension was not built", allow_module_level=True)
import tdds_kernels._C  # noqa: E402,F401  (a missing build is an error, not a skip)

EXT_UPDATE, EXT_STEP = torch.ops.tdds.update_ext, torch.ops.tdds.epoch_step_ext


def small_state(n=8, c=5, w=3):
    return (
        torch.zeros(n, c),
        torch.zeros(n, dtype=torch.int32),
        torch.full((n, w - 1), float("nan")),
        torch.zeros(n),
        torch.tensor([0, 0, 0, 0, 1]),
    )


def test_backend_resolves_to_the_extension():
    b = tk.TDDSTracker(10, 3, window=3, backend="cpu")
    assert b.backend == "cpu"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tdds::update_ext", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tdds::update_ext", "Meta")


def test_bad_arguments_raise():
    prev, seen, ring, score, counters = small_state()
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


def test_in_batch_duplicates_over_two_threads_apply_exactly_one_row():
    # A batch big enough to be split over threads, many copies of few samples: whatever thread
    # holds a copy, exactly one row of each sample is applied, and the counts match the reference.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for c in (5, 1000):
            index = torch.randint(0, 8, (512,))
            logits = torch.randn(512, c) * 3
            ext, ref = small_state(8, c), small_state(8, c)
            EXT_UPDATE(logits, index, ext[0], ext[1], ext[2], ext[4])
            torch.ops.tdds.update(logits, index, ref[0], ref[1], ref[2], ref[4])
            lp = torch.log(torch.softmax(logits, 1) + 1e-8)
            for s in torch.unique(index).tolist():  # the stored row is one row, never a mix
                assert (lp[index == s] - ext[0][s]).abs().amax(1).min() < 1e-5
            assert torch.equal(ext[1], ref[1]) and ext[4].tolist() == ref[4].tolist()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_isa_variants_match_reference(capability, tmp_path):
    """The kernels are compiled per ISA and picked at run time; force each one (a wider one than
    the CPU has falls back). Each has its own exp and log: on the probability sweep the stored
    logs and d stay within 1e-6 of the reference (measured: 2.2e-7)."""
    torch.save(probability_sweep(), tmp_path / "sweep.pt")
    code = textwrap.dedent("""
        import sys, torch, tdds_kernels, tdds_kernels._C
        torch.manual_seed(0)
        print(torch.backends.cpu.get_cpu_capability())
        z = torch.load(sys.argv[1])
        b, c = z.shape
        state = [torch.log_softmax(torch.randn(b, c), 1), torch.zeros(b, dtype=torch.int32),
                 torch.full((b, 2), -7.0), torch.tensor([0, 0, 0, 0, 1])]
        ext, ref = [t.clone() for t in state], [t.clone() for t in state]
        torch.ops.tdds.update_ext(z, torch.arange(b), *ext)
        torch.ops.tdds.update(z, torch.arange(b), *ref)
        torch.testing.assert_close(ext[0], ref[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ext[2], ref[2], rtol=1e-6, atol=1e-6)
        assert not ext[2][:, 0].isnan().any() and torch.equal(ext[3], ref[3])
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
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "sweep.pt")], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    cap, ok = out.stdout.split()
    assert ok == "ok"
    if capability != "default" and cap != capability.upper():
        pytest.skip(f"this CPU has no {capability.upper()}; the {cap} variant ran")
    assert cap == capability.upper()
