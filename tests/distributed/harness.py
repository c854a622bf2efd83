"""Spawning gloo ranks for the tracker tests (not a test module): `spawn` runs a worker on W CPU
processes on loopback with a deadline, `run_scenarios` runs named scenarios on one rank, each on a
fresh process group, and records a traceback or None per scenario plus what it returned."""

from __future__ import annotations

import datetime
import os
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 30
SPAWN_DEADLINE_S = 240


def run_scenarios(rank, world, tmp, scenarios: dict) -> None:
    """In a spawned rank: init gloo, run every scenario(rank, world, pg, subdir) and save
    {name: (traceback or None, returned value)} to tmp/result{rank}.pt."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world, timeout=timeout)
    results = {}
    for name, fn in scenarios.items():
        # A group per scenario: a rank that fails mid-scenario cannot pair its next collectives
        # with the others' pending ones.
        pg = dist.new_group(backend="gloo", timeout=timeout)
        sub = os.path.join(tmp, name)
        os.makedirs(sub, exist_ok=True)
        try:
            results[name] = (None, fn(rank, world, pg, sub))
        except BaseException:
            results[name] = (traceback.format_exc(), None)
    torch.save(results, os.path.join(tmp, f"result{rank}.pt"))
    dist.barrier()  # gloo aborts a rank that tears down while a peer is still connected
    dist.destroy_process_group()


def spawn(worker, world, tmp):
    """worker(rank, world, str(tmp)) on `world` spawned processes, killed past the deadline; each
    rank's tmp/result{rank}.pt, in rank order."""
    ctx = mp.start_processes(worker, args=(world, str(tmp)), nprocs=world, join=False, start_method="spawn")
    deadline = time.time() + SPAWN_DEADLINE_S
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.time())):
            if time.time() > deadline:
                raise TimeoutError(f"{world} ranks did not finish in {SPAWN_DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(os.path.join(tmp, f"result{r}.pt"), weights_only=False) for r in range(world)]


def assert_scenario_passed(world_results, scenario):
    """Fail with every rank's traceback if the scenario failed on any rank."""
    failures = [f"rank {r}:\n{res[scenario][0]}" for r, res in enumerate(world_results) if res[scenario][0]]
    assert not failures, "\n".join(failures)
