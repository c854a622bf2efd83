"""The sharded tracker's sync-free exchange (the NCCL default), forced on gloo over CPU processes.

Each scenario compares it with the eager exchange (the gloo default) on the same process group,
bit for bit, or checks what end_epoch reports. One spawn per world size runs every scenario, as
in test_sharded.py (tests/distributed/harness.py, sharded_data.py). The CUDA test at the end needs 2 GPUs.
"""

from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist

from tdds_kernels.distributed import ShardedTDDSTracker

from harness import COLLECTIVE_TIMEOUT_S, assert_scenario_passed, run_scenarios, spawn
from sharded_data import CFG, C, N, T, epoch_data, expect_error, feed

SCENARIOS = ("equivalence", "max_batch_size", "counts", "held_errors", "disagreement", "topk")


def scenario_equivalence(rank, world, pg, tmp):
    # Duplicates across ranks (sampler padding), uneven and empty last batches, targets, bf16.
    for targets, dtype in ((True, torch.float32), (False, torch.bfloat16)):
        eager = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=False)
        free = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=True)
        for e in range(T):
            feed(eager, e, world, rank, targets=targets, dtype=dtype)
            feed(free, e, world, rank, targets=targets, dtype=dtype)
        assert free._exchange.capacity == 3 + world - 1  # the largest first batch
        # A resumed run keeps the capacity (its first batch may be an epoch's short last one).
        free.save(os.path.join(tmp, "free.pt"))
        resumed = ShardedTDDSTracker.load(os.path.join(tmp, "free.pt"), process_group=pg, sync_free=True)
        assert resumed._exchange.capacity == free._exchange.capacity
        assert torch.equal(free.scores(), eager.scores())
        assert free.stats == eager.stats and free.stats["duplicates"] > 0
        assert free.full_state_dict()["rows_in_epoch"] == eager.full_state_dict()["rows_in_epoch"]
        if targets:
            got, ref = free.baseline_scores(), eager.baseline_scores()
            for k in ref:
                assert torch.equal(got[k].nan_to_num(-7), ref[k].nan_to_num(-7)), k


def scenario_topk(rank, world, pg, tmp):
    # A compressed previous row (prev_topk=3 of C): the exchange routes rows to their owners,
    # whose update is the compressed one; the same scores as the eager sharded tracker.
    eager = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=False, prev_topk=3)
    free = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=True, prev_topk=3)
    for e in range(T):
        feed(eager, e, world, rank)
        feed(free, e, world, rank)
    assert free.prev_topk == 3 and "prev_idx" in free.full_state_dict()
    assert torch.equal(free.scores(), eager.scores()) and free.stats == eager.stats


def scenario_max_batch_size(rank, world, pg, tmp):
    # A first batch smaller than later ones is fine with max_batch_size; mixed dtypes go as float32.
    expect_error(lambda: ShardedTDDSTracker(N, **CFG, process_group=pg, max_batch_size=0), ValueError, "max_batch_size")
    eager = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=False)
    free = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=True, max_batch_size=16)
    logits, _, steps = epoch_data(0, world)
    mixed = torch.float16 if rank == 0 else torch.float32
    for t in (eager, free):
        t.update(logits[:1].to(mixed), torch.tensor([rank]))
        for step in steps:
            t.update(logits[torch.cat([step[rank]] * 3)].to(mixed), torch.cat([step[rank]] * 3))
        t.end_epoch()
    assert free._exchange.wire == torch.float32
    for e in range(1, T):
        feed(eager, e, world, rank)
        feed(free, e, world, rank)
    assert torch.equal(free.scores(), eager.scores()) and free.stats == eager.stats


class Counter:
    """Counts collectives and host syncs (tolist, item, bool/int/float of a tensor, nonzero)."""

    COLLECTIVES = (
        "all_gather",
        "all_gather_single",
        "all_gather_into_tensor",
        "all_to_all_single",
        "all_gather_object",
        "all_reduce",
    )
    SYNCS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero")

    def __enter__(self):
        self.collectives = self.syncs = 0
        self.saved = []
        for name in self.COLLECTIVES:
            self._wrap(dist, name, "collectives")
        for name in self.SYNCS:
            self._wrap(torch.Tensor, name, "syncs")
        self._wrap(torch, "nonzero", "syncs")
        return self

    def _wrap(self, owner, name, field):
        orig = getattr(owner, name)
        self.saved.append((owner, name, orig))

        def wrapped(*args, **kwargs):
            setattr(self, field, getattr(self, field) + 1)
            return orig(*args, **kwargs)

        setattr(owner, name, wrapped)

    def __exit__(self, *exc):
        for owner, name, orig in reversed(self.saved):
            setattr(owner, name, orig)


def scenario_counts(rank, world, pg, tmp):
    # The C++ CPU backend: no sync of its own, so what is counted is the sharded tracker's.
    logits, _, steps = epoch_data(0, world)
    per_step = {}
    for sync_free in (False, True):
        t = ShardedTDDSTracker(N, **dict(CFG, backend="cpu"), process_group=pg, sync_free=sync_free)
        t.update(logits[steps[0][rank]], steps[0][rank])  # the sync-free path agrees on its capacity here
        with Counter() as count:
            for step in steps[1:]:
                t.update(logits[step[rank]], step[rank])
        per_step[sync_free] = (count.collectives / (len(steps) - 1), count.syncs / (len(steps) - 1))
        t.end_epoch()
    assert per_step[True] == (1, 0), per_step  # one all_gather, no host sync
    assert per_step[False][0] == 2 and per_step[False][1] >= 1, per_step  # the eager path, for contrast


def scenario_held_errors(rank, world, pg, tmp):
    x, i = torch.randn(4, C), torch.arange(rank, N, world)[:4]
    bad = world - 1

    def fresh():
        t = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=True)
        t.update(x, i)  # capacity 4, wire float32
        return t

    # Out-of-range indices: recorded nowhere, counted on their rank, reported by end_epoch, which
    # follows on_out_of_range as a single tracker does: "error" keeps the epoch open, "skip" closes it.
    t = fresh()
    t.update(x, torch.tensor([0, N, N + 5, 1]) if rank == bad else i)
    expect_error(t.end_epoch, ValueError, f"index: 2 rows of epoch 0 had dataset indices outside [0, {N})")
    assert t.stats["out_of_range"] == 2 and t.epoch == 0
    expect_error(t.end_epoch, ValueError, "the epoch is not closed")  # the counters hold it
    t.on_out_of_range = "skip"
    t.end_epoch()
    assert t.epoch == 1 and t.stats["out_of_range"] == 2
    # A shape error on one rank: every rank gets the same message once, the epoch closes without
    # that rank's rows, the next epoch is clean (no reload).
    t = fresh()
    t.update(torch.randn(4, C + 1) if rank == bad else x, i)
    text = expect_error(t.end_epoch, ValueError, f"update: rank {bad}: logits: expected {C} classes")
    assert "epoch 0 was closed" in text and t.epoch == 1
    t.update(x, i)
    t.end_epoch()
    assert t.epoch == 2 and t.stats["missing"] == 2 * (N - 4 * world)
    # A batch above the capacity, another dtype than the wire's: reported once, the epoch closed.
    # Bad labels: option-covered, like out-of-range indices.
    cases = (("overflow", ValueError, "max_batch_size="), ("dtype", TypeError, "another dtype"))
    for case, kind, what in (*cases, ("targets", ValueError, "class labels")):
        t = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=True)
        t.update(x.to(torch.bfloat16), i, torch.zeros(4, dtype=torch.int64))
        xb, ib, yb = x.to(torch.bfloat16), i, torch.zeros(4, dtype=torch.int64)
        if rank == bad:
            if case == "overflow":
                xb, ib, yb = torch.cat([xb, xb]), torch.cat([ib, ib]), torch.cat([yb, yb])
            elif case == "dtype":
                xb = x
            else:
                yb = torch.tensor([0, C, 1, -1])
        t.update(xb, ib, yb)
        expect_error(t.end_epoch, kind, what)
        if case == "targets":
            assert t.epoch == 0 and t.stats["out_of_range"] == 2
            t.on_out_of_range = "skip"
            t.end_epoch()
        assert t.epoch == 1
        t.end_epoch()  # clean: nothing held any more
        assert t.epoch == 2


def scenario_disagreement(rank, world, pg, tmp):
    t = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=True)
    x, i = torch.randn(2, C), torch.arange(rank, N, world)[:2]
    # Before the capacity is agreed: every rank raises at once.
    expect_error(lambda: t.update(x, i) if rank == 0 else t.end_epoch(), RuntimeError, "different calls")
    t.update(x, i)
    # Rank 0 forgot end_epoch: the others raise now; rank 0 (in update, no sync) at its end_epoch.
    if rank == 0:
        t.update(x, i)
    else:
        expect_error(t.end_epoch, RuntimeError, "different calls")
    expect_error(t.end_epoch, RuntimeError, "some ranks called update() while others called end_epoch()")
    assert t.epoch == 1  # reported once, the epoch closed: the next one is clean
    t.update(x, i)
    t.end_epoch()
    assert t.epoch == 2


# ---------------------------------------------------------------- harness (tests/distributed/harness.py)
def _worker(rank, world, tmp):
    run_scenarios(rank, world, tmp, {name: globals()["scenario_" + name] for name in SCENARIOS})


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def world_results(request, tmp_path_factory):
    return spawn(_worker, request.param, tmp_path_factory.mktemp(f"world{request.param}"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sync_free(world_results, scenario):
    assert_scenario_passed(world_results, scenario)


# ---------------------------------------------------------------- CUDA: NCCL, one GPU per rank
def _cuda_worker(rank, world, tmp):
    torch.cuda.set_device(rank)
    timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    dist.init_process_group("nccl", init_method=f"file://{tmp}/store", rank=rank, world_size=world, timeout=timeout)
    result = None
    try:
        dev = torch.device("cuda", rank)
        cfg = dict(CFG, backend="auto")
        free = ShardedTDDSTracker(N, **cfg, device=dev, process_group=dist.group.WORLD)  # NCCL: sync-free by default
        eager = ShardedTDDSTracker(N, **cfg, device=dev, process_group=dist.group.WORLD, sync_free=False)
        assert free.sync_free and not eager.sync_free
        for e in range(T):
            logits, _, steps = epoch_data(e, world)
            for k, step in enumerate(steps):
                x, i = logits[step[rank]].to(dev), step[rank].to(dev)
                eager.update(x, i)
                if e or k:  # after the first update, which agrees on the capacity (one sync)
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    free.update(x, i)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            free.end_epoch()
            eager.end_epoch()
        assert torch.equal(free.scores(), eager.scores()) and free.stats == eager.stats
    except BaseException:
        result = traceback.format_exc()
    torch.save(result, os.path.join(tmp, f"result{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2])
def test_cuda_nccl_update_does_not_sync(world, tmp_path):
    # One rank runs the whole path (the NCCL all_gather included) on a single GPU; NCCL gives each
    # rank its own GPU, so 2 ranks need 2.
    if torch.cuda.device_count() < world or not dist.is_nccl_available():
        pytest.skip(f"needs {world} CUDA GPU(s) and NCCL")
    failures = spawn(_cuda_worker, world, tmp_path)
    assert not any(failures), "\n".join(f for f in failures if f)
