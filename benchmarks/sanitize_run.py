"""A short run of one backend's CUDA kernels for compute-sanitizer (memcheck, racecheck).

Covers the paths where kernels go wrong: in-batch and cross-batch duplicates (thousands of rows
racing for a few samples), non-finite rows, out-of-range indices (negative and >= N), int32 and
int64 indices, every storage dtype, a single-block and a chunked row width, epoch steps
before and after the first window, and the update with targets / row_stats (every second
batch; int64 and int32 targets, some outside [0, C)). Each call's state is compared with the reference op on a
copy, so a kernel that writes wrong values (not only out of bounds) also fails the run.

    compute-sanitizer --tool memcheck --error-exitcode 9 python benchmarks/sanitize_run.py
    python benchmarks/sanitize_run.py --backend triton      # the Triton kernels instead
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import tdds_kernels  # noqa: F401  (the reference ops)
from tdds_kernels.ops import registry as backends
from tdds_kernels.ops.schema import EPOCH, NUM_SLOTS, ROW_STATS


def state(n, c, w, storage, device):
    prev = torch.zeros(n, c, dtype=storage, device=device)
    seen = torch.full((n,), -1, dtype=torch.int32, device=device)
    ring = torch.full((n, w - 1), float("nan"), device=device)
    score = torch.zeros(n, device=device)
    counters = torch.zeros(NUM_SLOTS, dtype=torch.int64, device=device)
    return [prev, seen, ring, score, counters]


def batch(n, b, c, epoch, dtype, index_dtype, device, gen):
    """b rows over n samples: many duplicates, ~5% non-finite rows, ~5% out-of-range indices."""
    index = torch.randint(0, n, (b,), generator=gen)
    bad = torch.rand(b, generator=gen) < 0.05
    index[bad] = torch.where(torch.rand(int(bad.sum()), generator=gen) < 0.5, -1 - index[bad], n + index[bad])
    z = torch.randn(b, c, generator=gen) * 3 + epoch * 0.1
    nonfinite = torch.rand(b, generator=gen) < 0.05
    cols = torch.randint(0, c, (int(nonfinite.sum()),), generator=gen)
    z[nonfinite.nonzero().squeeze(1), cols] = torch.tensor([float("nan"), float("inf"), -float("inf")])[
        torch.randint(0, 3, (cols.numel(),), generator=gen)
    ]
    return z.to(device, dtype), index.to(device, index_dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cuda", choices=["cuda", "triton", "cpu", "reference"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--deadline-s", type=float, default=None, help="start no case after this many seconds")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    device = torch.device(a.device)
    reason = backends.unavailable_reason(a.backend, device)
    if reason is not None:
        sys.exit(f"sanitize_run: backend {a.backend!r} is not available on {device}: {reason}")
    ops = backends.resolve(a.backend, device)
    ref = backends.resolve("reference", device)
    gen = torch.Generator().manual_seed(0)
    w, decay = 3, 0.9
    cases = [  # (N, B, C, logits dtype, storage dtype, index dtype)
        (48, 1024, 10, torch.float32, torch.float32, torch.int64),
        (48, 1024, 10, torch.bfloat16, torch.bfloat16, torch.int32),
        (40, 300, 1000, torch.float16, torch.float16, torch.int64),
        (16, 64, 9000, torch.float32, torch.float32, torch.int32),  # wider than one block: chunked
    ]
    failures = done = 0
    for n, b, c, zdt, storage, idt in cases:
        if a.deadline_s is not None and time.monotonic() - t0 > a.deadline_s:
            print(f"sanitize_run: --deadline-s {a.deadline_s:g} reached: {done} of {len(cases)} cases run")
            break
        done += 1
        mine, theirs = state(n, c, w, storage, device), state(n, c, w, storage, device)
        stats_ok = True
        for epoch in range(a.epochs):
            for k in range(2):  # two batches per epoch: cross-batch duplicates too
                z, index = batch(n, b, c, epoch, zdt, idt, device, gen)
                extra, expected = (), ()
                if k == 1:  # the second with targets: the kernels' row-stats variant
                    y = torch.randint(-1, c + 1, (b,), generator=gen).to(device, idt)
                    extra = (y, torch.full((b, len(ROW_STATS)), 7.0, device=device))
                    expected = (y, torch.empty(b, len(ROW_STATS), device=device))
                ops.update(z, index, mine[0], mine[1], mine[2], mine[4], *extra)
                ref.update(z, index, theirs[0], theirs[1], theirs[2], theirs[4], *expected)
                if extra:
                    got, want = extra[1], expected[1]
                    stats_ok &= torch.equal(got.isnan(), want.isnan()) and torch.allclose(
                        got, want, rtol=1e-4, atol=1e-5, equal_nan=True
                    )
            ops.epoch_step(mine[1], mine[2], mine[3], mine[4], decay)
            ref.epoch_step(theirs[1], theirs[2], theirs[3], theirs[4], decay)
        # Duplicates of one batch carry different logits here, so which row wins matters: the
        # documented rule (first in batch order) is what every backend must give.
        ok = (
            torch.equal(mine[1], theirs[1])
            and torch.equal(mine[4], theirs[4])
            and torch.allclose(mine[3], theirs[3], rtol=1e-4, atol=1e-5)
            and torch.allclose(mine[2], theirs[2], rtol=1e-4, atol=1e-5, equal_nan=True)
            and stats_ok
        )
        failures += not ok
        print(
            f"N={n} B={b} C={c} logits={str(zdt)[6:]} storage={str(storage)[6:]} index={str(idt)[6:]}: "
            f"epochs={int(mine[4][EPOCH])} counters={mine[4].tolist()} "
            f"{'matches the reference' if ok else 'DIFFERS from the reference'}",
            flush=True,
        )
    if failures:
        sys.exit(f"sanitize_run: {failures} case(s) differ from the reference")
    print(f"sanitize_run: {a.backend} on {device}: {done} of {len(cases)} cases run, all match the reference")


if __name__ == "__main__":
    main()
