"""What is particular to the C++ extension's CPU kernels (the contract itself is checked by
tests/ops/test_conformance_*.py): it is the backend "cpu" resolves to, its argument checks name
the argument, the per-ISA variants picked at run time, and in-batch duplicates over threads."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import tdds_kernels as tk

from tests.support.helpers import probability_sweep

if os.environ.get("TDDS_NO_EXT") == "1":
    pytest.skip("TDDS_NO_EXT=1: the C++ extension was not built", allow_module_level=True)
import tdds_kernels._C  # noqa: E402  (a missing build is an error, not a skip)

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
    with pytest.raises(ValueError, match="logits"):
        EXT_UPDATE(torch.randn(2, 5).double(), torch.tensor([0, 1]), prev, seen, ring, counters)
    with pytest.raises(ValueError, match="prev"):
        EXT_UPDATE(torch.randn(2, 4), torch.tensor([0, 1]), prev, seen, ring, counters)
    with pytest.raises(ValueError, match="index"):
        EXT_UPDATE(torch.randn(2, 5), torch.tensor([0.0, 1.0]), prev, seen, ring, counters)
    with pytest.raises(ValueError, match="counters"):
        EXT_STEP(seen, ring, score, counters[:4], 0.9)
    with pytest.raises(ValueError, match="seen"):
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


ISA_ORDER = ["default", "avx2", "avx512"]  # each variant runs on a CPU that runs the next one


def supported(capability):
    """Whether this CPU (and OS) can run the variant, from cpuid, not from ATEN_CPU_CAPABILITY."""
    widest = tdds_kernels._C.cpu_variant_supported().lower()
    return ISA_ORDER.index(capability) <= ISA_ORDER.index(widest)


def run_with_capability(capability, code, *args):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_supported_variant_is_from_cpuid():
    """cpu_variant_supported() agrees with the CPU flags the kernel reports in /proc/cpuinfo."""
    widest = tdds_kernels._C.cpu_variant_supported()
    assert widest in ("DEFAULT", "AVX2", "AVX512")
    if not os.path.exists("/proc/cpuinfo") or os.uname().machine != "x86_64":
        assert widest == "DEFAULT"
        return
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    avx2 = {"avx2", "fma", "f16c", "bmi1", "bmi2", "popcnt", "abm"} <= flags
    avx512 = avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    assert widest == ("AVX512" if avx512 else "AVX2" if avx2 else "DEFAULT")


@pytest.mark.parametrize("capability", ["avx512", "AVX512", "avx2", "zvector", "no-such-isa", ""])
def test_capability_variable_never_widens_the_choice(capability):
    """ATEN_CPU_CAPABILITY names a variant at most: one this CPU lacks (or a name torch does not
    know) must not crash the update (it used to die with SIGILL on AVX2-only CPUs): the kernels
    run the narrower of the variable and the CPU's widest variant."""
    out = run_with_capability(
        capability,
        """
        import torch, tdds_kernels as tk, tdds_kernels._C as C
        t = tk.TDDSTracker(64, 1000, window=3, trajectory_len=4, backend="cpu")
        for e in range(4):
            t.update(torch.randn(64, 1000), torch.randperm(64))
            t.end_epoch()
        assert torch.isfinite(t.scores()).all()
        print(C.cpu_variant(), C.cpu_variant_supported())
        """,
    )
    assert out.returncode == 0, f"returncode={out.returncode}: {out.stderr[-2000:]}"
    used, widest = out.stdout.split()
    assert ISA_ORDER.index(used.lower()) <= ISA_ORDER.index(widest.lower())
    if capability.lower() in ISA_ORDER and supported(capability.lower()):
        assert used == capability.upper()


@pytest.mark.parametrize("capability", ISA_ORDER)
def test_isa_variants_match_reference(capability, tmp_path):
    """The kernels are compiled per ISA and picked at run time; force each one the CPU supports
    (the others skip, saying so). Each has its own exp and log: on the probability sweep the
    stored logs and d stay within 1e-6 of the reference."""
    if not supported(capability):
        pytest.skip(
            f"this CPU cannot run the {capability.upper()} variant (widest: {tdds_kernels._C.cpu_variant_supported()})"
        )
    torch.save(probability_sweep(), tmp_path / "sweep.pt")
    code = textwrap.dedent("""
        import sys, torch, tdds_kernels, tdds_kernels._C
        tdds_kernels.load()  # registers the reference ops (import tdds_kernels alone is lazy)
        torch.manual_seed(0)
        print(tdds_kernels._C.cpu_variant())
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
    out = run_with_capability(capability, code, str(tmp_path / "sweep.pt"))
    assert out.returncode == 0, f"returncode={out.returncode}: {out.stderr[-2000:]}"
    used, ok = out.stdout.split()
    assert ok == "ok" and used == capability.upper()


def test_topk_old_row_not_written_by_the_op():
    # The cpu kernel takes the old kept classes out of the row and starts its selection from the
    # smallest of their new p; a state with a repeated class (what a loaded state is checked for
    # and the op never writes) reads 0 for the repeat, so the row takes the path for an old kept
    # p of 0 (selection from scratch on the restored row): memory-safe, and here, with the
    # repeats holding one value, the reference's result.
    from tests.support.conformance import RING_TOL, assert_topk_state, make_topk_state, run_update_topk

    n, c, k = 4, 40, 4
    val, idx, rest, seen, ring, counters = make_topk_state(n, c, 3, k, epoch=1, seed=11)
    idx[1] = torch.tensor([5, 5, 9, 5], dtype=idx.dtype)  # one class three times, with one value
    val[1] = val[1, 2]
    seen[:] = 0  # recorded last epoch: every row has a d
    out, ref = run_update_topk(
        torch.ops.tdds.update_topk_ext, torch.randn(n, c) * 3, torch.arange(n), (val, idx, rest, seen, ring, counters)
    )
    assert_topk_state(out, ref)
    torch.testing.assert_close(out[4], ref[4], equal_nan=True, **RING_TOL)
