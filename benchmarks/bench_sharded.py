"""Steps per second of the sharded tracker's update over gloo (CPU processes on one machine).

Each configuration is a checkout of the package (its root on sys.path) and an exchange:
`eager` (the gloo default: control all_gather + all_to_all, one host sync) or `sync_free` (the
NCCL default, forced here: one all_gather of fixed-size blocks). The configurations run in turn,
round after round, so a loaded machine slows them alike; compare ratios within one run.

    python benchmarks/bench_sharded.py --before /tmp/before --out benchmarks/results/sharded_gloo.md

`--before` is an older checkout (e.g. `git archive <commit> | tar -x -C /tmp/before`, with its
built extension copied in) measured with its default exchange.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(rank, world, root, sync_free, args, store, out):
    sys.path.insert(0, root)
    import tdds_kernels as tk

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    kwargs = {} if sync_free is None else {"sync_free": sync_free}
    t = tk.ShardedTDDSTracker(
        args.samples, args.classes, backend="cpu", trajectory_len=None, process_group=dist.group.WORLD, **kwargs
    )
    g = torch.Generator().manual_seed(rank)
    batches = [
        (torch.randn(args.batch, args.classes, generator=g), torch.randint(0, args.samples, (args.batch,), generator=g))
        for _ in range(8)
    ]
    for x, i in batches[:2]:  # warm-up (and the sync-free capacity agreement)
        t.update(x, i)
    dist.barrier()
    t0 = time.perf_counter()
    for s in range(args.steps):
        x, i = batches[s % len(batches)]
        t.update(x, i)
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        with open(out, "w") as f:
            f.write(f"{args.steps / elapsed} {tk.__file__}")
    dist.barrier()  # gloo aborts a rank that tears down while a peer is still connected
    dist.destroy_process_group()


def run(world, root, sync_free, args, tmp):
    store, out = os.path.join(tmp, f"store{time.monotonic_ns()}"), os.path.join(tmp, "out")
    mp.start_processes(_worker, args=(world, root, sync_free, args, store, out), nprocs=world, start_method="spawn")
    with open(out) as f:
        rate, package = f.read().split()
    assert package.startswith(root), (package, root)  # the checkout asked for, not another copy
    return float(rate)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", help="an older checkout's root, measured with its default exchange")
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 3])
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256, help="rows per rank per step")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    configs = [("after, eager (gloo default)", HERE, None), ("after, sync_free=True", HERE, True)]
    if args.before:
        configs.insert(0, ("before (gloo default)", os.path.abspath(args.before), None))
    tmp = os.path.join("/tmp", f"bench_sharded_{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    load0 = os.getloadavg()
    rates = {(w, name): [] for w in args.worlds for name, _, _ in configs}
    for _ in range(args.rounds):
        for w in args.worlds:
            for name, root, sync_free in configs:
                rates[(w, name)].append(run(w, root, sync_free, args, tmp))
    load1 = os.getloadavg()
    lines = [
        "# Sharded update over gloo: steps per second",
        "",
        f"{describe()}, torch {torch.__version__}, {datetime.date.today()}; "
        f"load average {load0[0]:.2f} before, {load1[0]:.2f} after.",
        f"N = {args.samples}, C = {args.classes}, {args.batch} float32 rows per rank per step, backend cpu, "
        f"1 thread per rank, {args.steps} steps per run, {args.rounds} rounds interleaved; best of the rounds.",
        "",
        "| ranks | configuration | steps/s (best) | rounds: min-max | ratio to the first (best) |",
        "|---:|---|---:|---:|---:|",
    ]
    for w in args.worlds:
        base = max(rates[(w, configs[0][0])])
        for name, _, _ in configs:
            best = max(rates[(w, name)])
            low = min(rates[(w, name)])
            lines.append(f"| {w} | {name} | {best:.1f} | {low:.0f}-{best:.0f} | {best / base:.2f} |")
    lines += [
        "",
        "The `after, eager` rows run the same code as `before` (the gloo default is unchanged), so their",
        "ratios show this machine's noise; the sync-free rows differ by the exchange alone.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
