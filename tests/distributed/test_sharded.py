"""ShardedTDDSTracker over gloo on CPU: 2 and 3 processes spawned on loopback.

One spawn per world size runs every scenario (process start-up dominates the cost); each rank
records a traceback or None per scenario and the tests below report them one by one. Collectives
time out (gloo timeout) and the spawn has a deadline, so a hang fails instead of blocking CI.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.distributed as dist

from tdds_kernels import TDDSTracker
from tdds_kernels.distributed import ShardedTDDSTracker, merge_shards, shard_path

from harness import assert_scenario_passed, run_scenarios, spawn
from sharded_data import CFG, C, N, T, epoch_data, expect_error, feed, single_error

SCENARIOS = ("equivalence", "dtypes", "save_load", "bad_shard", "bad_batch", "disagreement", "nonfinite", "topk")


# ---------------------------------------------------------------- scenarios (run on every rank)
def scenario_equivalence(rank, world, pg, tmp):
    sharded = ShardedTDDSTracker(N, **CFG, process_group=pg)
    assert isinstance(sharded, ShardedTDDSTracker) and sharded.num_samples == N
    assert sharded.local.num_samples == len(range(rank, N, world))  # 1/world of the state
    single = TDDSTracker(N, **CFG)
    for e in range(T):
        feed(sharded, e, world, rank)
        feed(single, e, world, None)
    assert sharded.complete
    torch.testing.assert_close(sharded.scores(), single.scores(), rtol=1e-6, atol=1e-7)
    assert sharded.stats == single.stats, (sharded.stats, single.stats)
    assert sharded.stats["duplicates"] > 0 and sharded.stats["missing"] > 0
    got, ref = sharded.baseline_scores(), single.baseline_scores()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-7, equal_nan=True)


def scenario_dtypes(rank, world, pg, tmp):
    # bf16 logits on every rank; then mixed dtypes across ranks (sent as float32).
    sharded, single = ShardedTDDSTracker(N, **CFG, process_group=pg), TDDSTracker(N, **CFG)
    feed(sharded, 0, world, rank, targets=False, dtype=torch.bfloat16)
    feed(single, 0, world, None, targets=False, dtype=torch.bfloat16)
    mixed = torch.float16 if rank == 0 else torch.float32
    feed(sharded, 1, world, rank, targets=False, dtype=mixed)
    logits, _, steps = epoch_data(1, world)
    for step in steps:  # the same rows, each rounded as its source rank did
        single.update(
            torch.cat([logits[i].to(torch.float16 if r == 0 else torch.float32).float() for r, i in enumerate(step)]),
            torch.cat(step),
        )
    single.end_epoch()
    for e in range(2, T):
        feed(sharded, e, world, rank, targets=False)
        feed(single, e, world, None, targets=False)
    torch.testing.assert_close(sharded.scores(), single.scores(), rtol=1e-6, atol=1e-7)


def scenario_bad_shard(rank, world, pg, tmp):
    # load_state_dict with one bad shard, or shards of different epochs: every rank raises, no rank
    # changes (issue 24 item 3), for either exchange.
    for sync_free in (False, True):
        t = ShardedTDDSTracker(N, **CFG, process_group=pg, sync_free=sync_free)
        feed(t, 0, world, rank)
        older = t.state_dict()
        feed(t, 1, world, rank)
        before = t.state_dict()
        bad = dict(before, seen=before["seen"][:-1]) if rank == world - 1 else before
        text = expect_error(lambda: t.load_state_dict(bad), ValueError, "seen")
        assert rank == world - 1 or f"load_state_dict: rank {world - 1} failed" in text, text
        mixed = older if rank == 0 else before  # each shard fine, but not of one epoch
        expect_error(lambda: t.load_state_dict(mixed), ValueError, "do not belong together")
        after = t.state_dict()
        for want, got in ((before, after), (before["baselines"], after["baselines"])):
            for key, value in want.items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(got[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
                elif key != "baselines":
                    assert got[key] == value, key
        t.load_state_dict(older)  # a good set of shards loads on every rank
        assert t.epoch == 1


def scenario_save_load(rank, world, pg, tmp):
    path = os.path.join(tmp, "tdds.pt")
    a, single = ShardedTDDSTracker(N, **CFG, process_group=pg), TDDSTracker(N, **CFG)
    for e in range(3):
        feed(a, e, world, rank)
        feed(single, e, world, None)
    logits, y, steps = epoch_data(3, world)
    feed_half = steps[: len(steps) // 2]  # save mid-epoch
    for step in feed_half:
        a.update(logits[step[rank]], step[rank], y[step[rank]])
        single.update(logits[torch.cat(step)], torch.cat(step), y[torch.cat(step)])
    a.save(path)
    assert shard_path(path, rank, world).exists()
    b = ShardedTDDSTracker.load(path, process_group=pg, backend="reference")
    full = a.full_state_dict()  # what a single tracker would hold: loadable by one
    ref_sd = single.state_dict()
    for key in ("prev", "seen", "ring", "score", "counters"):
        assert torch.equal(full[key].nan_to_num(-7), ref_sd[key].nan_to_num(-7)), (key, full[key], ref_sd[key])
    merged = merge_shards(path, world)  # the same, read from the files on one machine
    for key in ("prev", "seen", "ring", "score", "counters", "epoch_start_counters"):
        assert torch.equal(merged[key].nan_to_num(-7), full[key].nan_to_num(-7)), key
    assert merged["baselines"]["config"]["num_samples"] == N
    c = ShardedTDDSTracker(N, **CFG, process_group=pg)
    c.load_full_state_dict(merged if rank % 2 else full)
    for t in (a, b, c, single):
        for step in steps[len(steps) // 2 :]:
            idx = torch.cat(step) if t is single else step[rank]
            t.update(logits[idx], idx, y[idx])
        t.end_epoch()
        for e in range(4, T):
            feed(t, e, world, None if t is single else rank)
    ref = single.scores()
    for t in (a, b, c):
        torch.testing.assert_close(t.scores(), ref, rtol=1e-6, atol=1e-7)
        assert t.stats == single.stats
    # Shards of two different saves do not load together, on any rank.
    other = os.path.join(tmp, "other.pt")
    b.save(other)
    dist.barrier(pg)
    if rank == world - 1:
        shutil.copy(shard_path(other, rank, world), shard_path(path, rank, world))
    dist.barrier(pg)
    expect_error(lambda: ShardedTDDSTracker.load(path, process_group=pg), ValueError, "do not belong together")
    # A missing shard: the rank that lacks it says so, the others name it.
    if rank == 0:
        os.unlink(shard_path(other, 0, world))
    dist.barrier(pg)
    kind = FileNotFoundError if rank == 0 else RuntimeError
    expect_error(lambda: ShardedTDDSTracker.load(other, process_group=pg), kind, "no shard for rank 0")


def scenario_bad_batch(rank, world, pg, tmp):
    sharded, single = ShardedTDDSTracker(N, **CFG, process_group=pg), TDDSTracker(N, **CFG)
    bad_rank = world - 1
    good_x, good_i = torch.randn(4, C), torch.arange(rank, N, world)[:4]
    cases = {
        "classes": (torch.randn(4, C + 1), good_i, None),
        "dtype": (torch.randn(4, C).to(torch.float64), good_i, None),
        "index": (torch.randn(4, C), torch.tensor([0, N, N + 5, 1]), None),
        "index_shape": (torch.randn(4, C), torch.arange(3), None),
        "targets": (torch.randn(4, C), good_i, torch.tensor([0, C, 1, 2])),
    }
    for name, (x, i, y) in cases.items():
        kind, text = single_error(lambda: single.update(x, i, y))
        if rank == bad_rank:
            msg = expect_error(lambda: sharded.update(x, i, y), kind, text)
            assert msg == text, name  # exactly the single tracker's error
        else:
            good_y = torch.zeros(4, dtype=torch.int64) if y is not None else None
            expect_error(
                lambda: sharded.update(good_x, good_i, good_y),
                kind,
                f"rank {bad_rank} failed, so no rank went on: {text}",
            )
    # Two ranks bad at once: each gets its own error.
    if rank == 0:
        expect_error(lambda: sharded.update(torch.randn(4, C + 1), good_i), ValueError, "expected 7 classes")
    elif rank == 1:
        expect_error(lambda: sharded.update(good_x, torch.tensor([-1, 0, 1, 2])), ValueError, "(first: -1)")
    else:
        expect_error(lambda: sharded.update(good_x, good_i), ValueError, "rank 0 failed")
    assert sharded.stats == single.stats  # nothing was recorded; the next step works
    for e in range(T):
        feed(sharded, e, world, rank)
        feed(single, e, world, None)
    torch.testing.assert_close(sharded.scores(), single.scores(), rtol=1e-6, atol=1e-7)


def scenario_disagreement(rank, world, pg, tmp):
    t = ShardedTDDSTracker(N, **CFG, process_group=pg)
    x, i = torch.randn(2, C), torch.arange(rank, N, world)[:2]
    # Rank 0 forgot end_epoch: the next call pairs its update with the others' end_epoch.
    t.update(x, i)
    call = t.update if rank == 0 else t.end_epoch
    expect_error(lambda: call(x, i) if rank == 0 else call(), RuntimeError, "different calls")
    # Targets on some ranks only.
    expect_error(
        lambda: t.update(x, i, torch.zeros(2, dtype=torch.int64) if rank == 0 else None),
        ValueError,
        "pass them on every rank or on none",
    )
    t.end_epoch()
    assert t.epoch == 1


def scenario_nonfinite(rank, world, pg, tmp):
    t = ShardedTDDSTracker(N, **CFG, process_group=pg)
    x = torch.randn(3, C)
    if rank == 1:
        x[1, 2] = float("nan")
    t.update(x, torch.arange(rank, N, world)[:3])
    expect_error(t.end_epoch, ValueError, "1 rows of epoch 0 (all ranks) had non-finite")
    t.on_nonfinite = "skip"
    t.end_epoch()
    assert t.epoch == 1 and t.stats["nonfinite"] == 1


def scenario_topk(rank, world, pg, tmp):
    # A compressed previous row (prev_topk=3 of C=7): the same scores as one tracker with it,
    # through shard files and through the whole-dataset state.
    path = os.path.join(tmp, "tdds.pt")
    sharded = ShardedTDDSTracker(N, **CFG, process_group=pg, prev_topk=3)
    single = TDDSTracker(N, **CFG, prev_topk=3)
    assert sharded.prev_topk == 3 and sharded.local.state_dict()["prev_idx"].shape == (sharded.shard_size, 3)
    for e in range(3):
        feed(sharded, e, world, rank)
        feed(single, e, world, None)
    sharded.save(path)
    back = ShardedTDDSTracker.load(path, process_group=pg, backend="reference")
    full = back.full_state_dict()
    for key in ("prev_val", "prev_idx", "prev_rest", "ring"):
        torch.testing.assert_close(full[key], single.state_dict()[key], rtol=0, atol=0, equal_nan=True, msg=key)
    for e in range(3, T):
        feed(back, e, world, rank)
        feed(single, e, world, None)
    torch.testing.assert_close(back.scores(), single.scores(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(single.scores(), _full_row_scores(world))  # K = 3 < C changes them


def _full_row_scores(world):
    t = TDDSTracker(N, **CFG)
    for e in range(T):
        feed(t, e, world, None)
    return t.scores()


# ---------------------------------------------------------------- harness
def _worker(rank, world, tmp):
    names = os.environ.get("TDDS_TEST_SCENARIOS", ",".join(SCENARIOS)).split(",")
    run_scenarios(rank, world, tmp, {name: globals()["scenario_" + name] for name in names})


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def world_results(request, tmp_path_factory):
    return spawn(_worker, request.param, tmp_path_factory.mktemp(f"world{request.param}"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sharded(world_results, scenario):
    assert_scenario_passed(world_results, scenario)


def test_ownership_and_paths(tmp_path):
    assert shard_path(tmp_path / "t.pt", 1, 3) == tmp_path / "t.pt.rank1-of-3"
    with pytest.raises(ValueError, match="process_group"):
        ShardedTDDSTracker(10, 3, process_group=None)
