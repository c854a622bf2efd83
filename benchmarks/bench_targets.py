"""What `targets=` adds to a tracker update: the baselines' per-row quantities in the op's pass
over the logits plus their per-sample fold (tdds_kernels/core/baselines.py), per backend.

Two trackers of the same shape, one fed targets, are driven through the same batches with their
calls interleaved (a call of one, then the same batch for the other), so load from other
processes hits both alike; each timed call applies B distinct samples recorded in the previous
epoch (the steady state: d defined, every row applied). Reported per backend: the median time
per call without and with targets and their ratio.

    python benchmarks/bench_targets.py                        # cpu: B=4096, C=1000, N=100k
    python benchmarks/bench_targets.py --device cuda --out benchmarks/results/targets_<card>.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch
from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)

import tdds_kernels as tk
from tdds_kernels.ops import registry


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(backend, device, n, c, b, calls, seed=0):
    """(median s/call without targets, with targets) over `calls` interleaved pairs."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(window=10, trajectory_len=None, device=device, backend=backend)
    plain, with_t = tk.TDDSTracker(n, c, **kw), tk.TDDSTracker(n, c, **kw)
    labels = torch.randint(0, c, (n,), generator=g).to(device)
    pool = [(torch.randn(b, c, generator=g) * 3).to(device) for _ in range(4)]

    def epoch_batches():
        return torch.randperm(n, generator=g).to(device).split(b)

    for idx in epoch_batches():  # epoch 0, untimed: every sample recorded once
        plain.update(pool[0][: len(idx)], idx)
        with_t.update(pool[0][: len(idx)], idx, targets=labels[idx])
    plain.end_epoch()
    with_t.end_epoch()
    times = {False: [], True: []}
    batches, k = iter(()), 0
    while len(times[True]) < calls:
        idx = next(batches, None)
        if idx is None or len(idx) < b:
            if k:
                plain.end_epoch()
                with_t.end_epoch()
            batches, idx = iter(epoch_batches()), None
            k += 1
            continue
        z, y = pool[len(times[True]) % len(pool)], labels[idx]  # the batch's targets, as a loader gives them
        for use in (False, True) if len(times[True]) % 2 else (True, False):
            _sync(device)
            t0 = time.perf_counter()
            if use:
                with_t.update(z, idx, targets=y)
            else:
                plain.update(z, idx)
            _sync(device)
            times[use].append(time.perf_counter() - t0)
    return statistics.median(times[False]), statistics.median(times[True])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=None, help="start no backend after this many seconds")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    t_start = time.monotonic()
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = [x for x in registry.available(device) if not (x == "triton" and device.type == "cpu")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = describe(device)
    lines = [
        f"# targets= overhead, {where}, {datetime.date.today()}",
        "",
        f"B = {a.batch}, C = {a.classes}, N = {a.samples:,}, threads {torch.get_num_threads()}, "
        f"load average {load:.1f} at the start; median of {a.calls} interleaved calls each.",
        "",
        "| backend | update (ms) | update with targets (ms) | with / without |",
        "|---|---|---|---|",
    ]

    def write(note=""):
        # Rewritten after every row: a run cut short (its budget, a timeout's SIGINT) keeps them.
        text = "\n".join(lines + (["", note] if note else [])) + "\n"
        if a.out:
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, "w") as f:
                f.write(text)
        return text

    try:
        for name in names:
            if a.budget_s is not None and time.monotonic() - t_start > a.budget_s:
                lines.append(f"| {name} | not run: --budget-s {a.budget_s:g} reached | | |")
                continue
            t0, t1 = measure(name, device, a.samples, a.classes, a.batch, a.calls)
            lines.append(f"| {name} | {t0 * 1e3:.3f} | {t1 * 1e3:.3f} | {t1 / t0:.2f}x |")
            print(lines[-1], flush=True)
            write("(partial: the run did not finish)")
    except KeyboardInterrupt:
        write("(partial: interrupted)")
        return 130
    print(write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
