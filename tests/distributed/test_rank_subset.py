"""A sharded tracker's collective reads called on one rank only (the `if rank == 0:` habit) raise
within seconds, naming the call, instead of hanging until the process group's timeout."""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CALLS = ("scores()", "stats", "save()")


def _worker(rank, world, tmp):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    import tdds_kernels as tk

    results = {}
    for what in CALLS:
        # A group per call: the failed monitored barrier leaves nothing pending on the next.
        pg = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=120))
        tracker = tk.make_tracker(8, 3, window=3, trajectory_len=3, process_group=pg)
        if rank == 0:  # alone: the others are elsewhere (here: waiting for this rank's result)
            t0 = time.time()
            try:
                {
                    "scores()": tracker.scores,
                    "stats": lambda: tracker.stats,
                    "save()": lambda: tracker.save(f"{tmp}/t.pt"),
                }[what]()
                results[what] = ("returned", time.time() - t0)
            except RuntimeError as e:
                results[what] = (str(e), time.time() - t0)
            open(f"{tmp}/{what}.done", "w").close()
        else:
            while not os.path.exists(f"{tmp}/{what}.done"):
                time.sleep(0.05)
    torch.save(results, f"{tmp}/result{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_a_collective_on_rank_0_alone_raises_within_seconds(tmp_path):
    ctx = mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.time() + 240
    try:
        while not ctx.join(timeout=1):
            if time.time() > deadline:
                pytest.fail("the ranks hung")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    results = torch.load(tmp_path / "result0.pt")
    for what in CALLS:
        message, seconds = results[what]
        assert message.startswith(what) and "every rank" in message and "if rank == 0:" in message, message
        assert "\n" not in message and seconds < 15, (what, seconds)
