"""PruningSampler with a sharded tracker on 2 gloo ranks (the spawn harness of
tests/distributed/test_sharded.py): every rank agrees on the kept set without gathering N×C,
the ranks split each epoch with equal lengths, a mid-epoch resume after the switch takes the
same batches and gives the same scores, and ranks that disagree are told so."""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from harness import COLLECTIVE_TIMEOUT_S, spawn  # noqa: E402

import tdds_kernels as tk  # noqa: E402
from tdds_kernels.core.selection import select_coreset  # noqa: E402

N, C, W, T, E, B = 41, 5, 3, 4, 7, 4
CFG = dict(window=W, trajectory_len=T, backend="reference")
SCENARIOS = ("agree_and_split", "resume_mid_epoch", "disagreement")


def logits_of(idx, epoch):
    """The same row for a sample on every rank and in every run (a replicated model's view)."""
    return torch.randn(N, C, generator=torch.Generator().manual_seed(100 + epoch))[idx]


def run_epochs(tracker, sampler, epochs, log, stop=None):
    """Feed the tracker from the sampler's batches; stop after `stop` = (epoch, batches)."""
    for epoch in epochs:
        sampler.set_epoch(epoch)
        # Lazily, as a DataLoader takes them: the sampler counts what it has handed out.
        for step, batch in enumerate(BatchSampler(sampler, B, drop_last=False)):
            idx = torch.tensor(batch)
            tracker.update(logits_of(idx, epoch), idx)
            log.append((epoch, batch))
            if stop == (epoch, step + 1):
                return
        tracker.end_epoch()


def gather(obj, pg):
    out = [None] * dist.get_world_size(pg)
    dist.all_gather_object(out, obj, group=pg)
    return out


def scenario_agree_and_split(rank, world, pg, tmp):
    tracker = tk.make_tracker(N, C, process_group=pg, **CFG)
    sampler = tk.PruningSampler(tracker, 0.5, strategy="class_balanced", labels=torch.arange(N) % C, seed=1)
    assert (sampler.num_replicas, sampler.rank) == (world, rank)  # from the tracker's group
    single = tk.TDDSTracker(N, C, **CFG)
    for epoch in range(E):
        sampler.set_epoch(epoch)
        mine = list(sampler)
        every = gather(mine, pg)
        assert len({len(m) for m in every}) == 1 and len(mine) == len(sampler)
        pool = set(range(N)) if epoch < T else set(sampler.kept.tolist())
        assert set(sum(every, [])) == pool
        steps = [[m[i : i + B] for m in every] for i in range(0, len(mine), B)]
        for step in steps:
            tracker.update(logits_of(torch.tensor(step[rank]), epoch), torch.tensor(step[rank]))
            both = torch.tensor(sum(step, []))
            single.update(logits_of(both, epoch), both)
        tracker.end_epoch()
        single.end_epoch()
    kept = gather(sampler.kept, pg)
    assert all(torch.equal(k, kept[0]) for k in kept)
    expected = select_coreset("class_balanced", single.scores(), torch.arange(N) % C, prune_fraction=0.5)
    assert torch.equal(sampler.kept, expected)


def scenario_resume_mid_epoch(rank, world, pg, tmp):
    def fresh():
        tracker = tk.make_tracker(N, C, process_group=pg, **CFG)
        return tracker, tk.PruningSampler(tracker, 0.4, strategy="ccs", seed=2)

    tracker, sampler = fresh()
    full = []
    run_epochs(tracker, sampler, range(E), full)
    scores, kept = tracker.scores(), sampler.kept

    tracker, sampler = fresh()
    first = []
    run_epochs(tracker, sampler, range(E), first, stop=(T + 1, 2))
    path = os.path.join(tmp, "tdds.pt")
    tracker.save(path)
    torch.save(sampler.state_dict(), os.path.join(tmp, f"sampler{rank}.pt"))
    dist.barrier(pg)

    tracker = tk.load_tracker(path, process_group=pg, backend="reference")
    sampler = tk.PruningSampler(tracker, 0.4, strategy="ccs", seed=2)
    sampler.load_state_dict(torch.load(os.path.join(tmp, "sampler0.pt")))  # rank 0's file on every rank
    rest = []
    run_epochs(tracker, sampler, range(T + 1, E), rest)
    assert first + rest == full
    assert torch.equal(tracker.scores(), scores) and torch.equal(sampler.kept, kept)


def scenario_disagreement(rank, world, pg, tmp):
    tracker = tk.make_tracker(N, C, process_group=pg, **CFG)
    sampler = tk.PruningSampler(tracker, 0.5, strategy="random", seed=rank)  # a seed per rank: wrong
    run_epochs(tracker, sampler, range(T), [])
    try:
        sampler.set_epoch(T)
    except RuntimeError as exc:
        assert str(exc).startswith("kept set: rank 1 chose a different kept set than rank 0"), exc
    else:
        raise AssertionError("ranks with different kept sets were not told")


def _worker(rank, world, tmp):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    results = {}
    for name in SCENARIOS:
        pg = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        sub = os.path.join(tmp, name)
        os.makedirs(sub, exist_ok=True)
        t0 = time.time()
        try:
            globals()["scenario_" + name](rank, world, pg, sub)
            results[name] = None
        except BaseException:
            results[name] = traceback.format_exc()
        results[name + "_s"] = time.time() - t0
    torch.save(results, os.path.join(tmp, f"result{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def world_results(tmp_path_factory):
    return spawn(_worker, 2, tmp_path_factory.mktemp("sampler_world2"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_ranks(world_results, scenario):
    failures = [f"rank {r}:\n{res[scenario]}" for r, res in enumerate(world_results) if res[scenario]]
    assert not failures, "\n".join(failures)
