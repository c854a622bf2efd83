"""Op benchmark: tdds update and epoch step, every backend available on the device.

For each shape, times every backend of `tdds_kernels.backends.available(device)` (the Triton
interpreter excluded: it is a test tool), the eager reference and torch.compile of the
reference functions, and reports the bytes the op must move over its time as GB/s and as a
fraction of a device-to-device copy measured in the same run, with speedups over the eager
and compiled reference.

Bytes the op must move (one read or write each):
    update      B·C·|logits| + B·|index| + 2·B·C·|storage| (prev read and written)
                + 8·B (seen read and written) + 4·B (ring write)
    epoch step  4·N (seen) + 4·N·(W−1) (ring read) + 8·N (score read and written)
Every timed update applies all its rows with d defined (samples recorded in the previous
epoch, distinct indices); every timed epoch step folds a window with no sample missing and, on
CUDA, starts with a cold L2.

    python benchmarks/bench_ops.py --device cuda --out benchmarks/results/ops_h200.md
    python benchmarks/bench_ops.py --device cpu --preset cpu      # a few minutes on 2 cores
"""
from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import platform
import time
import warnings

import torch

import tdds_kernels  # noqa: F401
from tdds_kernels.ops import reference
from tdds_kernels.ops import registry as backends
from tdds_kernels.ops.schema import EPOCH, NUM_SLOTS

PRESETS = {  # (update (B, C) shapes, N for update, epoch step Ns)
    "full": ([(b, c) for b in (256, 1024, 8192) for c in (10, 100, 1000, 32000)], 1_280_000,
             [100_000, 1_280_000]),
    "cpu": ([(256, 10), (1024, 100), (4096, 1000)], 100_000, [100_000, 1_280_000]),
    "tiny": ([(64, 10)], 2_000, [2_000]),  # smoke test of the harness itself
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


ROUNDS = 3


def per_call_seconds(fn, calls, device, reset=None, rounds=None, flush=None):
    """Best over rounds of (time of fn(0..calls-1)) / calls, after one untimed warm-up round
    (compiles, allocates); reset() runs untimed before each round, so each sees the same state.
    With flush (CUDA only), each call is timed alone by events after flush() evicts the L2."""
    best = math.inf
    for r in range(1 + (rounds or ROUNDS)):
        if reset is not None:
            reset()
        sync(device)
        if flush is not None and device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(calls)]
            for k, (start, end) in enumerate(events):
                flush()
                start.record()
                fn(k)
                end.record()
            sync(device)
            t = sum(start.elapsed_time(end) for start, end in events) / 1e3
        else:
            t0 = time.perf_counter()
            for k in range(calls):
                fn(k)
            sync(device)
            t = time.perf_counter() - t0
        if r:
            best = min(best, t / calls)
    return best


def copy_bandwidth(device, nbytes):
    """Bytes moved per second (read + write) by a device-to-device copy of `nbytes`."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t = per_call_seconds(lambda k: dst.copy_(src), 5, device)
    return 2 * src.numel() * 4 / t


def contenders(device, compile_ref):
    """name → (update fn, epoch_step fn) with the op signatures."""
    out = {}
    for name in backends.available(device):
        if name == "triton" and device.type == "cpu":
            continue  # the interpreter: correctness only
        b = backends.resolve(name, device)
        out[name if name != "reference" else "reference (eager)"] = (b.update, b.epoch_step)
    if compile_ref:
        # The reference's Python functions, not the opaque ops: Inductor fuses their bodies.
        # Graph breaks are allowed (update's first-occurrence rule has data-dependent shapes).
        torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
        # dynamic=True: one compile serves every shape (per-shape compiles would dominate the run).
        out["reference (compile)"] = (torch.compile(reference.update, dynamic=True),
                                      torch.compile(reference.epoch_step, dynamic=True))
    return out


def fit_samples(n, c, storage, budget_bytes, batch):
    """N for the update benchmark: as asked, or as many as `prev` fits in the memory budget."""
    per_sample = c * storage.itemsize + 4 + 40 * 4
    return max(batch, min(n, budget_bytes // per_sample))


def bench_update(device, fns, b, c, n_req, window, storage, zdt, budget, max_calls, copy_bps):
    n = fit_samples(n_req, c, storage, budget, b)
    calls = max(1, min(max_calls, n // b))
    prev = torch.empty(n, c, dtype=storage, device=device).uniform_(-18.0, 0.0)
    seen = torch.zeros(n, dtype=torch.int32, device=device)
    ring = torch.zeros(n, window - 1, device=device)
    counters = torch.zeros(NUM_SLOTS, dtype=torch.int64, device=device)
    counters[EPOCH] = 1  # every row was recorded in epoch 0: d is computed
    perm = torch.randperm(n, device=device)
    index = [perm[k * b:(k + 1) * b] for k in range(calls)]
    # Enough distinct logits buffers that they are not all cache-resident (≥ 256 MB cycled).
    n_logits = max(1, min(calls, math.ceil(256e6 / (b * c * zdt.itemsize))))
    logits = [torch.randn(b, c, device=device).mul_(3).to(zdt) for _ in range(n_logits)]
    nbytes = b * c * zdt.itemsize + b * 8 + 2 * b * c * storage.itemsize + 12 * b
    rows = []
    for name, (update, _) in fns.items():
        def run(k, update=update):
            update(logits[k % n_logits], index[k], prev, seen, ring, counters)
        try:
            t = per_call_seconds(run, calls, device, reset=lambda: seen.zero_())
        except Exception as exc:  # e.g. out of memory in the reference's temporaries
            rows.append(dict(op="update", backend=name, error=f"{type(exc).__name__}: {exc}"[:80]))
            continue
        rows.append(dict(op="update", B=b, C=c, N=n, backend=name, t=t, gbps=nbytes / t / 1e9,
                         frac=nbytes / t / copy_bps))
    del prev, logits
    return rows


def bench_epoch_step(device, fns, n, window, max_calls, copy_bps, decay=0.9):
    w1 = window - 1
    calls = max_calls
    seen = torch.full((n,), w1, dtype=torch.int32, device=device)  # nobody missing
    ring = torch.rand(n, w1, device=device)
    score = torch.zeros(n, device=device)
    # One counters tensor per call, each at epoch W−1 (epoch_step advances it): every call
    # folds a window and marks no sample missing.
    counters = [torch.zeros(NUM_SLOTS, dtype=torch.int64, device=device) for _ in range(calls)]

    def reset():
        for ct in counters:
            ct[EPOCH] = w1

    nbytes = n * (4 + 4 * w1 + 8)
    # The state of N = 1.28M (61 MB) nearly fits a GPU's L2 (50 MB on an H100/H200), but an
    # epoch step meets it cold (a whole epoch of updates ran since): evict before each call.
    scratch = torch.empty(64 << 20, dtype=torch.int32, device=device) if device.type == "cuda" else None
    rows = []
    for name, (_, step) in fns.items():
        def run(k, step=step):
            step(seen, ring, score, counters[k], decay)
        reset()
        try:
            t = per_call_seconds(run, calls, device, reset=reset,
                                 flush=None if scratch is None else scratch.zero_)
        except Exception as exc:
            rows.append(dict(op="epoch step", backend=name, error=f"{type(exc).__name__}: {exc}"[:80]))
            continue
        rows.append(dict(op="epoch step", B="", C="", N=n, backend=name, t=t,
                         gbps=nbytes / t / 1e9, frac=nbytes / t / copy_bps))
    return rows


def add_speedups(rows):
    """× eager and × compile of the reference, within each (op, B, C, N) group."""
    groups = {}
    for r in rows:
        if "t" in r:
            groups.setdefault((r["op"], r["B"], r["C"], r["N"]), {})[r["backend"]] = r["t"]
    for r in rows:
        if "t" in r:
            g = groups[(r["op"], r["B"], r["C"], r["N"])]
            for col, base in (("x_eager", "reference (eager)"), ("x_compile", "reference (compile)")):
                r[col] = g[base] / r["t"] if base in g else None


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores " \
           f"({torch.get_num_threads()} torch threads)"


def table(rows, header):
    def f(v, fmt):
        return "" if v is None or v == "" else format(v, fmt)
    lines = header + ["", "| op | B | C | N | backend | time (µs) | GB/s | of copy | × eager ref | × compiled ref |",
                      "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | | | | {r['backend']} | failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['op']} | {r['B']} | {r['C']} | {r['N']:,} | {r['backend']} | "
                     f"{r['t'] * 1e6:,.1f} | {r['gbps']:.1f} | {r['frac']:.0%} | "
                     f"{f(r.get('x_eager'), '.2f')} | {f(r.get('x_compile'), '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="shape set (default: full on cuda, cpu on cpu)")
    ap.add_argument("--shapes", default=None, help="update shapes as BxC,BxC (overrides preset)")
    ap.add_argument("--samples", type=int, default=None, help="N for the update (capped by memory)")
    ap.add_argument("--epoch-samples", default=None, help="Ns for the epoch step, comma-separated")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--storage", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--logits-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--memory-gb", type=float, default=None,
                    help="budget for prev (default: 40%% of free GPU memory; 2 GB on CPU)")
    ap.add_argument("--calls", type=int, default=None, help="calls per timed round (default 50 cuda, 5 cpu)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds, best kept (default 3 cuda, 5 cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    a = ap.parse_args(argv)

    device = torch.device(a.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    shapes, n_update, n_steps = PRESETS[a.preset or ("full" if device.type == "cuda" else "cpu")]
    if a.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    n_update = a.samples or n_update
    if a.epoch_samples:
        n_steps = [int(v) for v in a.epoch_samples.split(",")]
    storage, zdt = getattr(torch, a.storage), getattr(torch, a.logits_dtype)
    if a.memory_gb is not None:
        budget = int(a.memory_gb * 1e9)
    elif device.type == "cuda":
        budget = int(0.4 * torch.cuda.mem_get_info(device)[0])
    else:
        budget = int(2e9)
    calls = a.calls or (50 if device.type == "cuda" else 5)
    global ROUNDS
    ROUNDS = a.rounds or (3 if device.type == "cuda" else 5)
    if a.threads:
        torch.set_num_threads(a.threads)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fns = contenders(device, not a.no_compile)
    copy_bps = copy_bandwidth(device, 1 << (30 if device.type == "cuda" else 28))
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    header = [
        f"Device: {device_name(device)}; torch {torch.__version__}, triton {triton_version}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Copy bandwidth (read + write, same run): {copy_bps / 1e9:.1f} GB/s. Logits {a.logits_dtype}, "
        f"storage {a.storage}, W = {a.window}; time per call, best of {ROUNDS} rounds of {calls} calls.",
        f"Backends available on {device.type}: {', '.join(backends.available(device))}.",
    ]
    rows = []

    def report(final=False):
        # Rewritten after every shape: a run cut short still leaves its table.
        add_speedups(rows)
        text = table(rows, header + ([] if final else ["", "(partial: the run did not finish)"]))
        if a.out:
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, "w") as fh:
                fh.write(text)
        return text

    for b, c in shapes:
        rows += bench_update(device, fns, b, c, n_update, a.window, storage, zdt, budget, calls, copy_bps)
        print(f"update B={b} C={c}: " + ", ".join(
            f"{r['backend']} {r['t'] * 1e6:.0f} µs" if "t" in r else f"{r['backend']} failed"
            for r in rows[-len(fns):]), flush=True)
        report()
    for n in n_steps:
        rows += bench_epoch_step(device, fns, n, a.window, calls, copy_bps)
        report()
    print(report(final=True))


if __name__ == "__main__":
    main()
