"""Op benchmark: tdds update and epoch step, every backend available on the device.

For each shape, times every backend of `tdds_kernels.ops.registry.available(device)` (the Triton
interpreter excluded: it is a test tool), the eager reference and torch.compile of the
reference functions, and reports the bytes the op must move over its time as GB/s and as a
fraction of a device-to-device copy measured in the same run, with speedups over the eager
and compiled reference.

On CUDA every time comes from CUDA events. The calls of a round are timed twice: launched one
by one from Python as a training loop would ("eager"), and replayed from a CUDA graph that
captured the same calls ("graph", the triton and cuda backends only: the reference syncs, so
it cannot be captured). The difference is the host's launch overhead per call.

Bytes the op must move (one read or write each):
    update      B·C·|logits| + B·|index| + 2·B·C·|storage| (prev read and written)
                + 8·B (seen read and written) + 4·B (ring write)
    epoch step  4·N (seen) + 4·N·(W−1) (ring read) + 8·N (score read and written)
Every timed update applies all its rows with d defined (samples recorded in the previous
epoch, distinct indices); every timed epoch step folds a window with no sample missing and, on
CUDA, starts with a cold L2.

    python benchmarks/bench_ops.py --device cuda --out benchmarks/results/ops_h200.md
    python benchmarks/bench_ops.py --device cuda --budget-s 90   # stops starting cases at 90 s
    python benchmarks/bench_ops.py --device cpu --preset cpu      # a few minutes on 2 cores

On CUDA it first times the headline shapes (B = 8192, C = 1000; fp32 logits and storage, then
bf16 logits and storage) with every contender, the compiled reference included, then the
update's sort alone (ops/triton/update.py sort_rows) beside the update at C = 1000 for B = 256,
1024, 4096, 8192; then the matrix B in {256, 1024, 8192} x C in {10, 100, 1000, 32000} x logits
{float32, bfloat16} x storage {float32, float16}: 48 update cases, fp32/fp32 first. The table is
rewritten after every row, so a run cut short (--budget-s, a SIGINT) keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import sys
import time
import warnings

import torch
from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)

import tdds_kernels  # noqa: F401
from tdds_kernels.core import huge_pages
from tdds_kernels.ops import reference
from tdds_kernels.ops import registry as backends
from tdds_kernels.ops.schema import EPOCH, NUM_SLOTS

PRESETS = {  # (update (B, C) shapes, N for update, epoch step Ns)
    "full": ([(b, c) for b in (256, 1024, 8192) for c in (10, 100, 1000, 32000)], 1_280_000, [100_000, 1_280_000]),
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
    On CUDA a round is timed by CUDA events around its launches; with flush (CUDA only), each
    call is timed alone by events after flush() evicts the L2."""
    best = math.inf
    for r in range(1 + (rounds or ROUNDS)):
        if reset is not None:
            reset()
        sync(device)
        if flush is not None and device.type == "cuda":
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)
            ]
            for k, (start, end) in enumerate(events):
                flush()
                start.record()
                fn(k)
                end.record()
            sync(device)
            t = sum(start.elapsed_time(end) for start, end in events) / 1e3
        elif device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for k in range(calls):
                fn(k)
            end.record()
            sync(device)
            t = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for k in range(calls):
                fn(k)
            sync(device)
            t = time.perf_counter() - t0
        if r:
            best = min(best, t / calls)
    return best


def graph_seconds(fn, calls, device, reset=None, rounds=None, flush=None):
    """As per_call_seconds on CUDA, with the calls captured once in a CUDA graph and replayed:
    the device time without the host's launch overhead. fn must already have run (compiled)."""
    graphs = []
    # torch.cuda.graph captures on its own side stream and joins it back afterwards.
    if flush is None:  # the whole round in one graph
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for k in range(calls):
                fn(k)
        graphs.append(g)
    else:  # one graph per call, each replayed after an L2 flush
        for k in range(calls):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn(k)
            graphs.append(g)
    best = math.inf
    for r in range(1 + (rounds or ROUNDS)):
        if reset is not None:
            reset()
        sync(device)
        t = 0.0
        if flush is None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graphs[0].replay()
            end.record()
            sync(device)
            t = start.elapsed_time(end) / 1e3
        else:
            events = []
            for g in graphs:
                flush()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                g.replay()
                end.record()
                events.append((start, end))
            sync(device)
            t = sum(start.elapsed_time(end) for start, end in events) / 1e3
        if r:
            best = min(best, t / calls)
    del graphs
    return best


CAPTURABLE = ("triton", "cuda")  # the reference syncs (nonzero): a capture would fail


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
        if name == "triton" and (device.type == "cpu" or backends._auto_reason(name, device)):
            continue  # the interpreter (on CPU, or TRITON_INTERPRET=1 on CUDA): correctness only
        b = backends.resolve(name, device)
        out[name if name != "reference" else "reference (eager)"] = (b.update, b.epoch_step)
    if compile_ref:
        # The reference's Python functions, not the opaque ops: Inductor fuses their bodies.
        # Graph breaks are allowed (update's first-occurrence rule has data-dependent shapes).
        torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
        # dynamic=True: one compile serves every shape (per-shape compiles would dominate the run).
        out["reference (compile)"] = (
            torch.compile(reference.update, dynamic=True),
            torch.compile(reference.epoch_step, dynamic=True),
        )
    return out


def fit_samples(n, c, storage, budget_bytes, batch):
    """N for the update benchmark: as asked, or as many as `prev` fits in the memory budget."""
    per_sample = c * storage.itemsize + 4 + 40 * 4
    return max(batch, min(n, budget_bytes // per_sample))


def timed(rows, row, device, fn, calls, reset, flush=None, capturable=False, emit=None):
    """Append `row` with its eager time t (and graph time tg where capturable on CUDA); emit(row)
    as soon as it is measured (the caller rewrites its table: a run cut short keeps the row)."""
    try:
        row["t"] = per_call_seconds(fn, calls, device, reset=reset, flush=flush)
    except Exception as exc:  # e.g. out of memory in the reference's temporaries
        row = dict(row, error=f"{type(exc).__name__}: {exc}"[:80])
    else:
        if capturable and device.type == "cuda":
            try:
                row["tg"] = graph_seconds(fn, calls, device, reset=reset, flush=flush)
            except Exception as exc:
                row["graph_error"] = f"{type(exc).__name__}: {exc}"[:60]
    rows.append(row)
    if emit is not None:
        emit(row)


def bench_update(device, fns, b, c, n_req, window, storage, zdt, budget, max_calls, emit=None):
    n = fit_samples(n_req, c, storage, budget, b)
    calls = max(1, min(max_calls, n // b))
    # On huge pages where the host has them, as the tracker allocates its state (core/huge_pages.py)
    prev = huge_pages.full((n, c), 0.0, storage, device).uniform_(-18.0, 0.0)
    seen = torch.zeros(n, dtype=torch.int32, device=device)
    ring = torch.zeros(n, window - 1, device=device)
    counters = torch.zeros(NUM_SLOTS, dtype=torch.int64, device=device)
    counters[EPOCH] = 1  # every row was recorded in epoch 0: d is computed
    perm = torch.randperm(n, device=device)
    index = [perm[k * b : (k + 1) * b] for k in range(calls)]
    # Enough distinct logits buffers that they are not all cache-resident (≥ 256 MB cycled).
    n_logits = max(1, min(calls, math.ceil(256e6 / (b * c * zdt.itemsize))))
    logits = [torch.randn(b, c, device=device).mul_(3).to(zdt) for _ in range(n_logits)]
    nbytes = b * c * zdt.itemsize + b * 8 + 2 * b * c * storage.itemsize + 12 * b
    rows = []
    for name, (update, _) in fns.items():

        def run(k, update=update):
            update(logits[k % n_logits], index[k], prev, seen, ring, counters)

        row = dict(
            op="update", B=b, C=c, N=n, logits=dtype_name(zdt), storage=dtype_name(storage), backend=name, nbytes=nbytes
        )
        timed(rows, row, device, run, calls, reset=lambda: seen.zero_(), capturable=name in CAPTURABLE, emit=emit)
    return rows  # prev and the logits buffers are freed here, before the next shape allocates


def bench_epoch_step(device, fns, n, window, max_calls, decay=0.9, emit=None):
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
        row = dict(op="epoch step", B="", C="", N=n, logits="", storage="", backend=name, nbytes=nbytes)
        timed(
            rows,
            row,
            device,
            run,
            calls,
            reset=reset,
            flush=None if scratch is None else scratch.zero_,
            capturable=name in CAPTURABLE,
            emit=emit,
        )
    return rows


SORT_BATCHES = (256, 1024, 4096, 8192)  # the sort alone at these B, beside the update at C = 1000
HEADLINE = ((8192, 1000, torch.float32, torch.float32), (8192, 1000, torch.bfloat16, torch.bfloat16))


def bench_sort(device, b, n, max_calls, emit=None):
    """The update launchers' sort of the batch by sample (ops/triton/update.py sort_rows, which
    the extension mirrors), timed alone: the fixed cost every update pays whatever C is."""
    from tdds_kernels.ops.triton.update import sort_rows

    calls = max_calls
    perm = torch.randperm(n, device=device)
    index = [perm[(k * b) % (n - b) :][:b] for k in range(calls)]
    rows = []
    row = dict(op="sort", B=b, C="", N=n, logits="", storage="", backend="sort_rows", nbytes=b * (8 + 4 + 4 + 8))
    timed(rows, row, device, lambda k: sort_rows(index[k], n), calls, reset=None, capturable=True, emit=emit)
    return rows


def bench_foreign_rows(device, fns, c=1000, n=100_000, b=2048, foreign=1792, calls=20, window=10):
    """The sharded sync-free exchange's update (issue 19 item 2): B rows of which `foreign` are
    other ranks' and skipped. Rows: all in range; foreign rows at distinct indices past N (what
    distributed/sync_free.py sends); foreign rows all at index N (one serial run, the old layout)."""
    prev = torch.zeros(n, c, device=device).uniform_(-18.0, 0.0)
    seen, ring = torch.zeros(n, dtype=torch.int32, device=device), torch.zeros(n, window - 1, device=device)
    counters = torch.zeros(NUM_SLOTS, dtype=torch.int64, device=device)
    counters[EPOCH] = 1  # rows recorded in epoch 0 (seen reset to 0 before each round): d is computed
    logits, own = torch.randn(b, c, device=device) * 3, torch.randperm(n, device=device)[:b]
    layouts = {
        "all in range": own,
        "distinct past N": torch.cat([own[: b - foreign], n + torch.arange(foreign, device=device)]),
        "one index N": torch.cat([own[: b - foreign], torch.full((foreign,), n, device=device)]),
    }
    lines = ["| backend | B | foreign rows | index of foreign rows | time (µs) |", "|---|---:|---:|---|---:|"]
    for name, (update, _) in fns.items():
        for what, index in layouts.items():
            run = lambda k, update=update, index=index: update(logits, index, prev, seen, ring, counters)  # noqa: E731
            # one call per round, seen reset before each: every timed call applies its own rows
            t = per_call_seconds(run, 1, device, reset=seen.zero_, rounds=calls)
            lines.append(f"| {name} | {b} | {0 if what == 'all in range' else foreign} | {what} | {t * 1e6:,.1f} |")
    return "\n".join(lines) + "\n"


def dtype_name(dt):
    return str(dt).replace("torch.", "")


def add_speedups(rows, copy_bps):
    """GB/s and fraction of copy per row; × eager and × compile of the reference (eager times),
    within each (op, B, C, N, logits, storage) group."""
    groups = {}
    key = ("op", "B", "C", "N", "logits", "storage")
    for r in rows:
        if "t" in r:
            groups.setdefault(tuple(r[k] for k in key), {})[r["backend"]] = r["t"]
            r["gbps"] = r["nbytes"] / r["t"] / 1e9
            r["frac"] = r["nbytes"] / r["t"] / copy_bps
            if "tg" in r:
                r["frac_graph"] = r["nbytes"] / r["tg"] / copy_bps
    for r in rows:
        if "t" in r:
            g = groups[tuple(r[k] for k in key)]
            for col, base in (("x_eager", "reference (eager)"), ("x_compile", "reference (compile)")):
                r[col] = g[base] / r["t"] if base in g else None


def sort_shares(rows):
    """Lines: the sort alone as a share of each capturable backend's update at the same B
    (C = 1000, float32 logits and storage), eager and graph-replayed."""
    out = []
    for r in rows:
        if r["op"] != "sort" or "t" not in r:
            continue
        parts = []
        for u in rows:
            key = (u["op"], u.get("B"), u.get("C"), u.get("logits"), u.get("storage"))
            if key == ("update", r["B"], 1000, "float32", "float32") and u["backend"] in CAPTURABLE and "t" in u:
                part = f"{u['backend']} {r['t'] / u['t']:.0%}"
                if "tg" in u and "tg" in r:
                    part += f" (graph {r['tg'] / u['tg']:.0%})"
                parts.append(part)
        if parts:
            out.append(f"- B = {r['B']}: " + ", ".join(parts))
    if out:
        out = ["", "The sort alone as a share of the update (C = 1000, float32 logits and storage):", *out]
    return out


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{describe(device)} ({torch.get_num_threads()} torch threads)"


def table(rows, header, device_type):
    def f(v, fmt):
        return "" if v is None or v == "" else format(v, fmt)

    graph = device_type == "cuda"
    cols = ["op", "B", "C", "N", "logits", "storage", "backend", "time (µs)"]
    cols += ["graph (µs)", "launch (µs)"] if graph else []
    cols += ["GB/s", "of copy"] + (["of copy (graph)"] if graph else []) + ["× eager ref", "× compiled ref"]
    lines = header + [
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if c in ("op", "backend", "logits", "storage") else "---:" for c in cols) + "|",
    ]
    for r in rows:
        n = f"{r['N']:,}" if isinstance(r.get("N"), int) else ""
        lead = [
            r["op"],
            str(r.get("B", "")),
            str(r.get("C", "")),
            n,
            r.get("logits", ""),
            r.get("storage", ""),
            r["backend"],
        ]
        if "error" in r or "skipped" in r:
            why = f"failed: {r['error']}" if "error" in r else r["skipped"]
            lines.append("| " + " | ".join(lead + [why] + [""] * (len(cols) - len(lead) - 1)) + " |")
            continue
        vals = [f"{r['t'] * 1e6:,.1f}"]
        if graph:
            if "tg" in r:
                vals += [f"{r['tg'] * 1e6:,.1f}", f"{(r['t'] - r['tg']) * 1e6:,.1f}"]
            else:
                vals += ["failed" if "graph_error" in r else "", ""]
        vals += [f"{r['gbps']:.1f}", f"{r['frac']:.0%}"]
        if graph:
            vals += [f"{r['frac_graph']:.0%}" if "frac_graph" in r else ""]
        vals += [f(r.get("x_eager"), ".2f"), f(r.get("x_compile"), ".2f")]
        lines.append("| " + " | ".join(lead + vals) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="shape set (default: full on cuda, cpu on cpu)"
    )
    ap.add_argument("--shapes", default=None, help="update shapes as BxC,BxC (overrides preset)")
    ap.add_argument("--samples", type=int, default=None, help="N for the update (capped by memory)")
    ap.add_argument("--epoch-samples", default=None, help="Ns for the epoch step, comma-separated")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument(
        "--storage",
        default=None,
        help="storage dtypes, comma-separated, of float32, bfloat16, float16 "
        "(default: float32,float16 on cuda, float32 on cpu)",
    )
    ap.add_argument(
        "--logits-dtype",
        default=None,
        help="logits dtypes, comma-separated, of float32, bfloat16, float16 "
        "(default: float32,bfloat16 on cuda, float32 on cpu)",
    )
    ap.add_argument(
        "--memory-gb", type=float, default=None, help="budget for prev (default: 40%% of free GPU memory; 2 GB on CPU)"
    )
    ap.add_argument("--calls", type=int, default=None, help="calls per timed round (default 20 cuda, 5 cpu)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds, best kept (default 3 cuda, 5 cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    ap.add_argument(
        "--headline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time B=8192, C=1000 (fp32/fp32 and bf16/bf16) first, with every contender (default: on cuda)",
    )
    ap.add_argument("--no-sort", action="store_true", help="skip the sort-alone rows (cuda)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no new case after this many seconds; the rest are listed as not run",
    )
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--foreign-rows", action="store_true", help="only the sync-free exchange's skipped rows")
    a = ap.parse_args(argv)
    if a.foreign_rows:  # B = 2048 with 1,792 other ranks' rows (skipped) against all in range
        print(bench_foreign_rows(torch.device(a.device), contenders(torch.device(a.device), False)))
        return
    t_start = time.monotonic()

    device = torch.device(a.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    cuda = device.type == "cuda"
    shapes, n_update, n_steps = PRESETS[a.preset or ("full" if cuda else "cpu")]
    if a.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    n_update = a.samples or n_update
    if a.epoch_samples:
        n_steps = [int(v) for v in a.epoch_samples.split(",")]
    allowed = ("float32", "bfloat16", "float16")

    def dtypes(arg, default, what):
        names = (arg or default).split(",")
        for v in names:
            if v not in allowed:
                ap.error(f"--{what}: expected a comma-separated list of {allowed}, got {v!r}")
        return [getattr(torch, v) for v in names]

    logits_dtypes = dtypes(a.logits_dtype, "float32,bfloat16" if cuda else "float32", "logits-dtype")
    storages = dtypes(a.storage, "float32,float16" if cuda else "float32", "storage")
    if a.memory_gb is not None:
        budget = int(a.memory_gb * 1e9)
    elif cuda:
        budget = int(0.4 * torch.cuda.mem_get_info(device)[0])
    else:
        budget = int(2e9)
    calls = a.calls or (20 if cuda else 5)
    global ROUNDS
    ROUNDS = a.rounds or (3 if cuda else 5)
    if a.threads:
        torch.set_num_threads(a.threads)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fns = contenders(device, not a.no_compile)
    copy_bps = copy_bandwidth(device, 1 << (30 if cuda else 28))
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    timing = (
        "CUDA events; graph = the same calls replayed from one CUDA graph, launch = time − graph"
        if cuda
        else "wall clock"
    )
    header = [
        f"Device: {device_name(device)}; torch {torch.__version__}, triton {triton_version}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Copy bandwidth (read + write, same run): {copy_bps / 1e9:.1f} GB/s. W = {a.window}; time per "
        f"call ({timing}), best of {ROUNDS} rounds of up to {calls} calls.",
        f"Backends available on {device.type}: {', '.join(backends.available(device))}.",
    ]
    # First what the GPU goals are about, with every contender, compiled reference included:
    # the headline shapes, then the sort alone beside the update at C = 1000. Then fp32/fp32
    # over every shape, the epoch steps, the other dtype pairs. torch.compile of the reference
    # costs the most time (a compile per dtype pair), so outside the headline every case runs
    # first without it and then, budget permitting, again for it alone. A run cut short by
    # --budget-s (or a SIGINT) keeps the most useful part.
    compiled = {k: v for k, v in fns.items() if k == "reference (compile)"}
    others = {k: v for k, v in fns.items() if k not in compiled}
    headline = HEADLINE if (a.headline if a.headline is not None else cuda) else ()
    pairs = [(z, st) for z in logits_dtypes for st in storages]
    pairs.sort(key=lambda p: (p[0] != torch.float32) + (p[1] != torch.float32))
    cases = [("update", h, others) for h in headline]
    cases += [("update", h, compiled) for h in headline if compiled]
    if cuda and not a.no_sort:
        for b in SORT_BATCHES:
            if (b, 1000, torch.float32, torch.float32) not in headline:
                cases.append(("update", (b, 1000, torch.float32, torch.float32), others))
            cases.append(("sort", b, {}))
    later = [("update", (b, c, z, st)) for b, c in shapes for z, st in pairs[:1]]
    later += [("epoch step", n) for n in n_steps]
    later += [("update", (b, c, z, st)) for z, st in pairs[1:] for b, c in shapes]
    done = {job for op, job, _ in cases if op == "update"}
    later = [(op, job) for op, job in later if not (op == "update" and job in done)]
    cases += [(op, job, others) for op, job in later]
    cases += [(op, job, compiled) for op, job in later] if compiled else []
    # Rows sort by the case's first appearance, so a case's compiled row joins its other rows.
    first = {}
    for op, job, _ in cases:
        first.setdefault((op, job), len(first))
    rows = []

    def report(final=False):
        # Rewritten after every row: a run cut short still leaves its table.
        add_speedups(rows, copy_bps)
        ordered = sorted(rows, key=lambda r: r["case"])  # stable: contenders keep their order
        note = [] if final else ["", "(partial: the run did not finish)"]
        text = table(ordered, header + note, device.type) + "\n".join(sort_shares(ordered)) + "\n"
        if a.out:
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, "w") as fh:
                fh.write(text)
        return text

    def emit_for(case):
        def emit(row):
            row["case"] = case
            rows.append(row)
            report()

        return emit

    try:
        for op, job, contenders_now in cases:
            case = first[(op, job)]
            if a.budget_s is not None and time.monotonic() - t_start > a.budget_s:
                why = f"not run: --budget-s {a.budget_s:g} reached"
                who = ", ".join(contenders_now) or "sort_rows"
                row = dict(case=case, op=op, B="", C="", N="", logits="", storage="", backend=who, skipped=why)
                if op == "update":
                    b, c, z, st = job
                    row.update(B=b, C=c, logits=dtype_name(z), storage=dtype_name(st))
                elif op == "sort":
                    row.update(B=job)
                else:
                    row.update(N=job)
                rows.append(row)
                continue
            emit = emit_for(case)
            if op == "update":
                b, c, z, st = job
                new = bench_update(device, contenders_now, b, c, n_update, a.window, st, z, budget, calls, emit)
                print(
                    f"update B={b} C={c} {dtype_name(z)}/{dtype_name(st)}: "
                    + ", ".join(
                        f"{r['backend']} {r['t'] * 1e6:.0f} µs" + (f" (graph {r['tg'] * 1e6:.0f})" if "tg" in r else "")
                        if "t" in r
                        else f"{r['backend']} failed"
                        for r in new
                    ),
                    flush=True,
                )
            elif op == "sort":
                new = bench_sort(device, job, n_update, calls, emit)
                print(
                    f"sort B={job}: " + ", ".join(f"{r.get('t', float('nan')) * 1e6:.1f} µs" for r in new), flush=True
                )
            else:
                bench_epoch_step(device, contenders_now, job, a.window, calls, emit=emit)
    except KeyboardInterrupt:
        print("bench_ops: interrupted; the table holds the rows measured so far", flush=True)
        report()
        return 130
    print(report(final=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
