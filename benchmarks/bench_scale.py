"""TDDS at ImageNet scale, measured: whole epochs, scaling curves, and the release's memory.

    python benchmarks/bench_scale.py                  # full CPU run (a few minutes on 2 cores)
    python benchmarks/bench_scale.py --quick --out /tmp/x    # seconds: small shapes, for a test
    python benchmarks/bench_scale.py --device cuda    # the same at ImageNet shape and C = 21,841

What it runs, each configuration in its own forked process (so the peak resident memory it
reports belongs to that configuration alone; on CUDA in-process, peak from the allocator):

1. Whole epochs at ImageNet shape (N = 1,281,167, C = 1000, batches of 1024 in a random order
   covering all N) through TDDSTracker for every CPU backend and storage float32 / float16. One
   untimed epoch first (every row seen once, so the timed epoch takes the steady-state path that
   reads the previous probabilities), then one timed epoch: all updates plus end_epoch. The
   pure-PyTorch reference backend is far slower, so it runs at a smaller N (labelled) and is
   compared per row. The Triton backend runs on CPU only through its interpreter (a test tool)
   and is not timed here.
2. Time per row against N (1e4 to 4e6, C = 1000; float32 where its state fits in --mem-gb,
   float16 up to the largest N) and against C (10 to 32,000, N = 20,000, float32). Each point
   times at least 2^18 rows (--quick: 2^13): whole epochs while N is smaller, else the same
   2^18 random rows (spread over all N) in two epochs, the second timed.
3. Peak memory of the release-style loop (benchmarks/release_style.py: all T epochs' logits and
   probabilities in RAM) against N, next to the tracker's at the same N and C. It runs with
   W = T (one window): the same T epochs sit in RAM, the window stack is (N, T-1) floats instead
   of (N, W-1), and the run is ~6x shorter than W = 10 (21 windows of 9 recomputed terms each).

Logits: a pool of at most 64 distinct batches (and at most --pool-mb) prepared before timing and
cycled; the kernels' cost does not depend on the values, and a full epoch of distinct logits
(5 GB at ImageNet shape) would not fit next to the state.

Bytes an epoch must move, the floor the times are compared with (per row, s = storage bytes per
element, l = logits bytes per element, W = window):
    logits read C*l, previous probabilities read C*s and written C*s,
    update's small traffic 20 B (index 8 read, `seen` 4 read + 4 written, one ring entry 4
    written), and, for an end_epoch that folds a window into the score (epochs W-1 onwards),
    12 + 4*(W-1) B (`seen` 4, the ring row 4*(W-1), the score 4 read and 4 written).
    The whole-epoch rows time the second epoch, whose end_epoch folds nothing yet (it only
    checks the counters); the small-N points of the N curve run many epochs and include folds.
Copy bandwidth: bytes read plus bytes written per second by torch's copy_ of a 256 MiB float32
buffer (best of 5), measured inside the same process right before each configuration, so load
from other processes hits both alike. "fraction of copy bandwidth" = (bytes / time) / that.
Peak RSS: VmHWM, reset (/proc/self/clear_refs) after the logits pool is built; "growth" is the
peak minus the resident size at that moment, compared with the tracker's state size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py, beside this script

import tdds_kernels as tk

IMAGENET_N, IMAGENET_C, IN21K_C = 1_281_167, 1000, 21_841
WINDOW = 10
UPDATE_SMALL_BYTES = 20
END_EPOCH_BYTES = 12 + 4 * (WINDOW - 1)
HERE = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "float16": torch.float16}


# --------------------------------------------------------------------------- measurement helpers
def row_bytes(c, storage_bytes, logit_bytes=4):
    return c * logit_bytes + 2 * c * storage_bytes + UPDATE_SMALL_BYTES + END_EPOCH_BYTES


def state_bytes(n, c, storage_bytes):
    # prev (N, C) + seen int32 + ring (N, W-1) float32 + score float32
    return n * (c * storage_bytes + 4 + 4 * (WINDOW - 1) + 4)


def _proc_status():
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _reset_peak():
    """Restart VmHWM at the current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device, nbytes=256 << 20, reps=5):
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.zeros_like(src)
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def logits_pool(c, batch, device, pool_bytes, dtype=torch.float32):
    count = int(max(2, min(64, pool_bytes // (batch * c * torch.finfo(dtype).bits // 8))))
    gen = torch.Generator(device=device).manual_seed(0)
    # Scaled so the softmax is neither flat nor one-hot, as trained logits are.
    return [torch.randn(batch, c, generator=gen, device=device).mul_(3).to(dtype) for _ in range(count)]


def _feed(tracker, perm, pool, batch, rows):
    """`rows` rows of perm in batches, logits cycled from the pool; returns rows fed."""
    n = min(rows, perm.numel())
    for j, start in enumerate(range(0, n, batch)):
        idx = perm[start : min(start + batch, n)]
        logits = pool[j % len(pool)]
        tracker.update(logits if idx.numel() == batch else logits[: idx.numel()], idx)
    return n


def measure(device, backend, storage, n, c, batch, min_rows, pool_mb, threads=None):
    """One configuration: an untimed first epoch, then timed steady-state rows (see docstring)."""
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    bw = copy_bandwidth(device)
    pool = logits_pool(c, batch, device, pool_mb << 20)
    gen = torch.Generator().manual_seed(1)
    perms = [torch.randperm(n, generator=gen).to(device) for _ in range(2)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        _reset_peak()
        before = _proc_status()["VmRSS"]
    t0 = time.perf_counter()
    tracker = tk.TDDSTracker(
        n, c, window=WINDOW, device=device, backend=backend, storage_dtype=DTYPES[storage], trajectory_len=None
    )
    _sync(device)
    t_alloc = time.perf_counter() - t0
    subset = min_rows < n
    if subset:
        # A curve point times min_rows rows: both epochs visit only those (spread over the whole
        # state), so the untimed first epoch costs min_rows rows instead of N; the others are
        # missing, which end_epoch records and which changes nothing for the rows timed.
        sub = perms[1][:min_rows]
        perms = [sub, sub[torch.randperm(min_rows, generator=gen).to(device)]]
    t0 = time.perf_counter()
    _feed(tracker, perms[0], pool, batch, n)
    tracker.end_epoch()
    _sync(device)
    t_first = time.perf_counter() - t0
    # Steady state: whole epochs while they fit in min_rows, else the first min_rows of one.
    t_update = t_end = 0.0
    rows = epochs = folds = 0
    while rows < min_rows:
        perm = perms[(epochs + 1) % 2]
        t0 = time.perf_counter()
        fed = _feed(tracker, perm, pool, batch, min_rows - rows)
        _sync(device)
        t_update += time.perf_counter() - t0
        rows += fed
        if fed == perm.numel() and not subset:  # (a subset's end_epoch would scan all N: not timed)
            folds += tracker.epoch >= WINDOW - 1  # this end_epoch completes a window and folds it
            t0 = time.perf_counter()
            tracker.end_epoch()
            _sync(device)
            t_end += time.perf_counter() - t0
            epochs += 1
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _proc_status()["VmHWM"]
    sb = DTYPES[storage].itemsize
    return dict(
        device=str(device),
        backend=tracker.backend,
        storage=storage,
        n=n,
        c=c,
        batch=batch,
        threads=torch.get_num_threads(),
        rows=rows,
        epochs=epochs,
        folds=folds,
        t_update=t_update,
        t_end=t_end,
        t_first=t_first,
        t_alloc=t_alloc,
        copy_bw=bw,
        peak=peak,
        before=before,
        state=state_bytes(n, c, sb),
        row_bytes=row_bytes(c, sb),
        # end_epoch's bytes count only for the timed end_epochs that folded a window
        moved=rows * (c * 4 + 2 * c * sb + UPDATE_SMALL_BYTES) + folds * n * END_EPOCH_BYTES,
    )


def measure_release(n, c, t_len, window, tmpdir, threads=None):
    """Peak RSS of benchmarks/release_style.py's loop on T epochs of random logits."""
    if threads:
        torch.set_num_threads(threads)
    import numpy as np

    sys.path.insert(0, str(HERE))
    import release_style

    rng = np.random.default_rng(0)
    distinct = 2  # the loop loads every epoch's file; identical contents cost the same memory
    for k in range(distinct):
        np.save(f"{tmpdir}/logits{k}.npy", (rng.standard_normal((n, c), dtype=np.float32) * 3))
    for t in range(t_len):
        os.symlink(f"{tmpdir}/logits{t % distinct}.npy", f"{tmpdir}/{t}_Output.npy")
        np.save(f"{tmpdir}/{t}_Index.npy", rng.permutation(n))
    _reset_peak()
    before = _proc_status()["VmRSS"]
    t0 = time.perf_counter()
    release_style.main(tmpdir, t_len, window, 0.9, f"{tmpdir}/score.npy")
    elapsed = time.perf_counter() - t0
    return dict(n=n, c=c, t_len=t_len, window=window, peak=_proc_status()["VmHWM"], before=before, seconds=elapsed)


def _child(conn, fn, kwargs):
    try:
        conn.send(("ok", fn(**kwargs)))
    except BaseException as exc:  # report, never hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def isolated(fn, **kwargs):
    """Run fn(**kwargs) in a forked process: its peak RSS is its own. (None, why) on failure."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, kwargs))
    proc.start()
    send.close()
    try:
        status, value = recv.recv()
    except EOFError:
        status, value = "error", "the process died (killed for memory?)"
    proc.join()
    if status != "ok":
        print(f"  {fn.__name__} {kwargs}: {value}", flush=True)
        return None, value
    return value, None


# --------------------------------------------------------------------------- plan and report
def plan(a):
    gib = 1 << 30
    mem = a.mem_gb * gib
    if a.quick:
        epoch_n, epoch_c, ref_n = 20_000, 100, 2_000
        n_list, c_list, c_n, min_rows = [2_000, 20_000], [10, 100, 300], 2_000, 8_192
        release = dict(n=[1_000, 3_000], c=10, t_len=12, window=12)
    else:
        epoch_n, epoch_c, ref_n = IMAGENET_N, IMAGENET_C, 20_000
        n_list = [10_000, 30_000, 100_000, 300_000, 1_000_000, 2_000_000, 4_000_000]
        c_list, c_n, min_rows = [10, 30, 100, 300, 1000, 3000, 10_000, 32_000], 20_000, 1 << 18
        release = dict(n=[10_000, 30_000, 100_000, 200_000], c=100, t_len=30, window=30)
    return dict(
        epoch_n=epoch_n,
        epoch_c=epoch_c,
        ref_n=ref_n,
        n_list=n_list,
        c_list=c_list,
        c_n=c_n,
        min_rows=min_rows,
        release=release,
        mem=mem,
    )


def fmt_bytes(b):
    return f"{b / (1 << 30):.2f} GiB" if b >= 1 << 30 else f"{b / (1 << 20):.0f} MiB"


def loadavg():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"] * 3


def run_cpu(a, p):
    device = "cpu"
    res = dict(epochs=[], by_n=[], by_c=[], release=[], notes=[])
    names = tk.available_backends(torch.device(device))
    if "triton" in names:
        res["notes"].append("triton: on CPU only through the Triton interpreter (a test tool); not timed")
    for backend in [b for b in names if b != "triton"]:
        n = p["epoch_n"] if backend != "reference" else p["ref_n"]
        for threads in a.threads:
            for storage in ("float32", "float16"):
                print(f"epoch: {backend} {storage} N={n:,} C={p['epoch_c']} threads={threads}", flush=True)
                r, err = isolated(
                    measure,
                    device=device,
                    backend=backend,
                    storage=storage,
                    n=n,
                    c=p["epoch_c"],
                    batch=a.batch,
                    min_rows=n,
                    pool_mb=a.pool_mb,
                    threads=threads,
                )
                res["epochs"].append(r or dict(backend=backend, storage=storage, n=n, error=err))
    fast = "cpu" if "cpu" in names else "reference"
    for n in p["n_list"]:
        for storage in ("float32", "float16"):
            if state_bytes(n, 1000 if not a.quick else p["epoch_c"], DTYPES[storage].itemsize) > p["mem"]:
                continue
            c = 1000 if not a.quick else p["epoch_c"]
            print(f"rows vs N: {fast} {storage} N={n:,} C={c}", flush=True)
            r, err = isolated(
                measure,
                device=device,
                backend=fast,
                storage=storage,
                n=n,
                c=c,
                batch=a.batch,
                min_rows=p["min_rows"],
                pool_mb=a.pool_mb,
                threads=a.curve_threads,
            )
            if r:
                res["by_n"].append(r)
    for c in p["c_list"]:
        if state_bytes(p["c_n"], c, 4) > p["mem"]:
            continue
        # Wide rows cost more each: fewer timed rows (at least one whole epoch) keep the run short.
        min_rows = max(p["c_n"], min(p["min_rows"], p["min_rows"] * 1000 // c))
        print(f"rows vs C: {fast} float32 N={p['c_n']:,} C={c}", flush=True)
        r, err = isolated(
            measure,
            device=device,
            backend=fast,
            storage="float32",
            n=p["c_n"],
            c=c,
            batch=a.batch,
            min_rows=min_rows,
            pool_mb=a.pool_mb,
            threads=a.curve_threads,
        )
        if r:
            res["by_c"].append(r)
    rel = p["release"]
    for n in rel["n"]:
        if 2.5 * rel["t_len"] * n * rel["c"] * 4 > p["mem"]:  # measured: ~2.3x the probabilities
            continue
        print(f"release-style memory: N={n:,} C={rel['c']} T={rel['t_len']}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            r, err = isolated(
                measure_release,
                n=n,
                c=rel["c"],
                t_len=rel["t_len"],
                window=rel["window"],
                tmpdir=tmp,
                threads=a.curve_threads,
            )
        t, _ = isolated(
            measure,
            device=device,
            backend=fast,
            storage="float32",
            n=n,
            c=rel["c"],
            batch=a.batch,
            min_rows=n,
            pool_mb=min(a.pool_mb, 64),
            threads=a.curve_threads,
        )
        if r:
            r["tracker"] = t
            res["release"].append(r)
    return res


def run_cuda(a, p):
    device = torch.device("cuda", torch.cuda.current_device())
    res = dict(epochs=[], by_n=[], by_c=[], release=[], notes=[])
    names = tk.available_backends(device)
    for c in (p["epoch_c"], IN21K_C if not a.quick else 2 * p["epoch_c"]):
        for backend in names:
            n = p["epoch_n"] if backend != "reference" else p["ref_n"]
            for storage in ("float32", "float16"):
                free, _ = torch.cuda.mem_get_info(device)
                need = state_bytes(n, c, DTYPES[storage].itemsize) + (a.pool_mb << 20) + (1 << 30)
                if need > 0.9 * free:
                    res["notes"].append(
                        f"{backend} {storage} N={n:,} C={c}: skipped, needs {fmt_bytes(need)} of {fmt_bytes(free)} free"
                    )
                    continue
                print(f"epoch: {backend} {storage} N={n:,} C={c}", flush=True)
                try:
                    r = measure(device, backend, storage, n, c, a.batch, n, a.pool_mb)
                except Exception as exc:
                    r = dict(backend=backend, storage=storage, n=n, c=c, error=f"{type(exc).__name__}: {exc}")
                res["epochs"].append(r)
                torch.cuda.empty_cache()
    return res


def epoch_table(rows, device_kind):
    peak_label = "peak allocated" if device_kind == "cuda" else "peak RSS growth"
    out = [
        "| backend | threads | storage | N | C | s / epoch | of which end_epoch (s) | µs / row | GB moved | GB/s "
        f"| fraction of copy bw | {peak_label} | state | growth / state | first epoch (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['backend']} | | {r['storage']} | {r['n']:,} | | failed: {r['error']} |" + " |" * 9)
            continue
        t = r["t_update"] + r["t_end"]
        growth = r["peak"] - r["before"]
        out.append(
            f"| {r['backend']} | {r['threads']} | {r['storage']} | {r['n']:,} | {r['c']:,} | "
            f"{t:.3f} | {r['t_end']:.3f} "
            f"| {t / r['rows'] * 1e6:.3f} | {r['moved'] / 1e9:.2f} | {r['moved'] / t / 1e9:.2f} "
            f"| {r['moved'] / t / r['copy_bw']:.0%} | {fmt_bytes(growth)} | {fmt_bytes(r['state'])} "
            f"| {growth / r['state']:.2f} | {r['t_first']:.3f} |"
        )
    return out


def curve_table(rows, key):
    out = [
        f"| {key.upper()} | storage | state | timed rows | µs / row | floor µs / row | × floor "
        "| fraction of copy bw | peak RSS |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_row = (r["t_update"] + r["t_end"]) / r["rows"]
        floor = (r["moved"] / r["rows"]) / r["copy_bw"]
        out.append(
            f"| {r[key]:,} | {r['storage']} | {fmt_bytes(r['state'])} | {r['rows']:,} "
            f"| {per_row * 1e6:.3f} | {floor * 1e6:.3f} | {per_row / floor:.2f} "
            f"| {floor / per_row:.0%} | {fmt_bytes(r['peak'])} |"
        )
    return out


def release_table(rows):
    out = [
        "| N | C | T | release-style peak RSS growth | loop time (s) | tracker peak RSS growth | release / tracker |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        g = r["peak"] - r["before"]
        t = r["tracker"]
        tg = (t["peak"] - t["before"]) if t else None
        ratio = f"{g / tg:.1f}" if tg else ""
        out.append(
            f"| {r['n']:,} | {r['c']} | {r['t_len']} | {fmt_bytes(g)} | {r['seconds']:.1f} "
            f"| {fmt_bytes(tg) if tg else 'failed'} | {ratio} |"
        )
    return out


def where_time_goes(res):
    """Plain readings of the curves: fixed vs per-class cost, and the cost of a large state."""
    out = []
    pts = [
        (r["c"], (r["t_update"] + r["t_end"]) / r["rows"], r["moved"] / r["rows"] / r["copy_bw"] / r["c"])
        for r in res["by_c"]
    ]
    pts.sort()
    if len(pts) >= 3:
        # The narrowest rows cost what any row costs (per-row and per-call work); the slope
        # between the two widest is what a class costs once rows are wide.
        (c0, t0, _), (c1, t1, _), (c2, t2, f2) = pts[0], pts[-2], pts[-1]
        b = (t2 - t1) / (c2 - c1)
        out.append(
            f"C curve: at C = {c0:,} a row costs {t0 * 1e6:.3f} µs, nearly all of it not per class; "
            f"between C = {c1:,} and {c2:,} a class costs {b * 1e9:.3f} ns against a copy-bandwidth "
            f"floor of {f2 * 1e9:.3f} ns ({b / f2:.2f}x)."
        )
    for storage in ("float32", "float16"):
        rows = sorted((r for r in res["by_n"] if r["storage"] == storage), key=lambda r: r["n"])
        if len(rows) >= 2:
            lo, hi = rows[0], rows[-1]
            per = [(r["t_update"] + r["t_end"]) / r["rows"] for r in (lo, hi)]
            out.append(
                f"N curve, {storage}: {per[1] * 1e6:.3f} µs per row at N = {hi['n']:,} "
                f"(state {fmt_bytes(hi['state'])}) against {per[0] * 1e6:.3f} at N = {lo['n']:,} "
                f"({fmt_bytes(lo['state'])}): x{per[1] / per[0]:.2f}."
            )
    return out


def plot(res, path, title):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("by_n", "by_c", "release") if res[k]]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    axes = axes[0]
    bw = sorted(r["copy_bw"] for r in res["by_n"] + res["by_c"])
    bw = bw[len(bw) // 2] if bw else None
    colors = {"float32": "tab:blue", "float16": "tab:orange"}
    for ax, key in zip(axes, panels):
        if key in ("by_n", "by_c"):
            x_key = "n" if key == "by_n" else "c"
            for storage in ("float32", "float16"):
                # One floor line per dtype from the run's median copy bandwidth (the per-process
                # measurements, in the table, scatter with the load).
                pts = sorted(
                    (r[x_key], (r["t_update"] + r["t_end"]) / r["rows"] * 1e6, r["moved"] / r["rows"] / bw * 1e6)
                    for r in res[key]
                    if r["storage"] == storage
                )
                if not pts:
                    continue
                xs, ys, fl = zip(*pts)
                ax.plot(xs, ys, "o-", color=colors[storage], label=f"measured, {storage} storage")
                ax.plot(
                    xs,
                    fl,
                    "--",
                    color=colors[storage],
                    alpha=0.7,
                    label=f"floor: bytes/row at {bw / 1e9:.0f} GB/s copy bw, {storage}",
                )
            c0 = res[key][0]
            if key == "by_n":
                ax.set_xlabel("N (samples in the tracker's state)")
                ax.set_title(f"Time per row against N (C = {c0['c']:,})")
                if any(r["n"] >= IMAGENET_N for r in res[key]):
                    ax.axvline(IMAGENET_N, color="gray", lw=0.8)
                    ax.text(IMAGENET_N, ax.get_ylim()[1], " ImageNet", va="top", fontsize=8, color="gray")
            else:
                ax.set_xlabel("C (classes)")
                ax.set_title(f"Time per row against C (N = {c0['n']:,})")
            ax.set_ylabel("µs per row (update + end_epoch share)")
        else:
            pts = sorted(
                (
                    r["n"],
                    (r["peak"] - r["before"]) / 2**30,
                    (r["tracker"]["peak"] - r["tracker"]["before"]) / 2**30 if r["tracker"] else math.nan,
                )
                for r in res["release"]
            )
            xs, rel, trk = zip(*pts)
            r0 = res["release"][0]
            ax.plot(xs, rel, "s-", color="tab:red", label=f"release-style loop (all {r0['t_len']} epochs in RAM)")
            ax.plot(xs, trk, "o-", color="tab:green", label="TDDSTracker (float32 state)")
            ax.set_xlabel("N (samples)")
            ax.set_ylabel("peak RSS growth (GiB)")
            ax.set_title(f"Peak memory, C = {r0['c']}, T = {r0['t_len']}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping labels
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes: seconds, for a test")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--pool-mb", type=int, default=256, help="logits pool size cap")
    ap.add_argument(
        "--mem-gb", type=float, default=9.0, help="largest state (and release-style footprint) to allocate, GiB"
    )
    ap.add_argument("--machine", default=None, help="named in the table (default: read off this machine)")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for the table and plot")
    ap.add_argument("--name", default=None, help="file stem (default scale_<device>[_quick])")
    ap.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts for the whole epochs (default 1 and all CPUs)",
    )
    ap.add_argument(
        "--curve-threads", type=int, default=None, help="torch threads for the scaling curves (default: all CPUs)"
    )
    a = ap.parse_args(argv)
    cpus = os.cpu_count() or 1
    a.threads = sorted({int(t) for t in a.threads.split(",")}) if a.threads else sorted({1, cpus})
    a.curve_threads = a.curve_threads or cpus
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_scale: skipped: --device cuda but no CUDA device is available")
        return 0
    p = plan(a)
    load_before = loadavg()
    print(f"load average before: {' '.join(load_before)}", flush=True)
    t_start = time.monotonic()
    res = run_cuda(a, p) if a.device == "cuda" else run_cpu(a, p)
    load_after = loadavg()
    print(f"load average after: {' '.join(load_after)}", flush=True)
    stem = a.name or f"scale_{a.device}{'_quick' if a.quick else ''}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = a.machine or describe(a.device)
    when = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    cmd = "python benchmarks/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# TDDS at scale: {machine}{' (QUICK: small shapes, not ImageNet)' if a.quick else ''}",
        "",
        f"`{cmd.strip()}` on {when}; torch {torch.__version__}; torch threads: whole epochs "
        f"{', '.join(map(str, a.threads))}, curves {a.curve_threads}; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"run took {time.monotonic() - t_start:.0f} s.",
        f"Load average (1/5/15 min) before: {' '.join(load_before)}; after: {' '.join(load_after)}.",
        "Every number below is from this one run; definitions (bytes moved, copy bandwidth, "
        "peak RSS) are in the script's docstring. Copy bandwidth was measured in each "
        "configuration's own process just before it ran.",
        "",
    ]
    lines += [f"## Whole epochs (batches of {a.batch}, random order, steady state: the second epoch)", ""]
    lines += epoch_table(res["epochs"], a.device)
    ref = [r for r in res["epochs"] if r.get("backend") == "reference" and "error" not in r]
    if ref and ref[0]["n"] != p["epoch_n"]:
        lines += ["", f"The reference runs at N = {ref[0]['n']:,} (not {p['epoch_n']:,}): compare µs / row."]
    bws = [r["copy_bw"] for k in ("epochs", "by_n", "by_c") for r in res[k] if "copy_bw" in r]
    if bws:
        lines += [
            "",
            f"Copy bandwidth across the configurations' processes: {min(bws) / 1e9:.1f} to "
            f"{max(bws) / 1e9:.1f} GB/s (read + written).",
        ]
    for note in res["notes"]:
        lines += ["", note]
    if res["by_n"]:
        lines += [
            "",
            f"## Time per row against N (C = {res['by_n'][0]['c']:,}, at least {p['min_rows']:,} timed rows each)",
            "",
        ] + curve_table(res["by_n"], "n")
    if res["by_c"]:
        lines += ["", f"## Time per row against C (N = {res['by_c'][0]['n']:,})", ""] + curve_table(res["by_c"], "c")
    if res["release"]:
        lines += (
            [
                "",
                "## Release-style loop (benchmarks/release_style.py) against the tracker: peak memory",
                "",
                "Release-style: all T epochs' logits loaded, scattered and kept as probabilities, then every "
                f"window recomputed (W = {p['release']['window']}: one window, see the docstring); "
                f"the tracker: one epoch of the same shape (its state does not grow "
                "with T).",
            ]
            + [""]
            + release_table(res["release"])
        )
    readings = where_time_goes(res)
    if readings:
        lines += ["", "## Where the time goes (read from the curves above)", ""] + [f"- {x}" for x in readings]
    png = out / f"{stem}.png"
    if plot(res, png, f"TDDS scale, {machine}, {when}; load {' '.join(load_before)} -> {' '.join(load_after)}"):
        lines += ["", f"Plot: `{png.name}`."]
    text = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(
        json.dumps(dict(load_before=load_before, load_after=load_after, **res), indent=1, default=str)
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
