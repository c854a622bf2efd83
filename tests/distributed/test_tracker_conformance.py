"""One contract, three trackers (issue 20 item 3, issue 24 item 1): every scenario is written once
and run on the single tracker, the sharded tracker with the eager exchange, and the sharded tracker
with the sync-free exchange, on gloo with 2 and 3 ranks. Each returns what it observed; the test
asserts the observations agree across the variants (scores, stats, baselines, epochs, warnings,
error types and texts), and each scenario asserts the documented difference where there is one:
the eager paths refuse a bad batch at update() (nothing recorded), the sync-free exchange drops the
rows at fault and reports at end_epoch (docs/distributed.md, "Errors").

The single tracker runs inside every rank and is fed the ranks' batches concatenated in rank
order, which is what the sharded tracker's scores equal. One spawn per world size runs them all.
"""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

from tdds_kernels import TDDSTracker
from tdds_kernels.distributed import ShardedTDDSTracker

from harness import run_scenarios, spawn

N, C, WINDOW, T = 29, 5, 3, 4
CFG = dict(num_classes=C, window=WINDOW, decay=0.9, trajectory_len=T, backend="reference")
VARIANTS = ("single", "eager", "sync_free")


class Ctx:
    """One variant on one rank: how to build, feed, save and load it."""

    def __init__(self, variant, rank, world, pg, tmp):
        self.variant, self.rank, self.world, self.pg, self.tmp = variant, rank, world, pg, tmp
        self.sharded = variant != "single"
        self.deferred = variant == "sync_free"  # errors surface at end_epoch, not at update

    def make(self, **kw):
        if not self.sharded:
            return TDDSTracker(N, **{**CFG, **kw})
        return ShardedTDDSTracker(N, **{**CFG, **kw}, process_group=self.pg, sync_free=self.deferred)

    def load(self, path):
        if not self.sharded:
            return TDDSTracker.load(path, backend="reference")
        return ShardedTDDSTracker.load(path, process_group=self.pg, backend="reference", sync_free=self.deferred)

    def path(self, name):
        return os.path.join(self.tmp, f"{self.variant}-{name}")

    def mine(self, per_rank: list[torch.Tensor]) -> torch.Tensor:
        """This tracker's part of a step: its rank's batch, or every rank's in rank order."""
        return per_rank[self.rank] if self.sharded else torch.cat(per_rank)

    def step(self, t, epoch, per_rank, targets=True, logits=None):
        x, y, _ = epoch_data(epoch, self.world)
        x = x if logits is None else logits
        idx = self.mine(per_rank)
        t.update(x[idx.clamp(0, N - 1)], idx, y[idx.clamp(0, N - 1)] if targets else None)

    def feed(self, t, epoch, steps=None, targets=True, close=True):
        _, _, all_steps = epoch_data(epoch, self.world)
        for per_rank in all_steps if steps is None else all_steps[steps]:
            self.step(t, epoch, per_rank, targets)
        if close:
            t.end_epoch()


def epoch_data(epoch, world):
    """Logits and labels by sample (the same on every rank), and per step each rank's batch: a
    DistributedSampler-like split whose padding repeats samples (duplicates), some samples left
    out (missing), uneven batch sizes, and empty batches for ranks that run out."""
    g = torch.Generator().manual_seed(99 + epoch)
    logits, targets = torch.randn(N, C, generator=g) * 3, torch.randint(0, C, (N,), generator=g)
    perm = torch.randperm(N, generator=g)
    perm = perm[(perm + epoch) % 7 != 0]
    total = -(-len(perm) // world) * world
    padded = torch.cat([perm, perm[: total - len(perm)]])
    chunks = [list(padded[r::world].split(3 + r)) for r in range(world)]
    empty = torch.zeros(0, dtype=torch.int64)
    steps = [[c[s] if s < len(c) else empty for c in chunks] for s in range(max(map(len, chunks)))]
    return logits, targets, steps


def one_rank(world, rows, rank=None):
    """A step in which only `rank` (default: the last) passes `rows`; the others pass empty batches."""
    rank = world - 1 if rank is None else rank
    empty = torch.zeros(0, dtype=torch.int64)
    return [torch.as_tensor(rows, dtype=torch.int64) if r == rank else empty for r in range(world)]


def raised(fn):
    """(type name, text) of what fn raised, or None; asserts the text is one line."""
    try:
        fn()
    except (TypeError, ValueError, RuntimeError) as exc:
        assert "\n" not in str(exc), str(exc)
        return type(exc).__name__, str(exc)
    return None


def core(text):
    """A message without what the sharded tracker adds around the single tracker's: the rank that
    failed, the other held errors, the note that the epoch was closed."""
    text = re.sub(r"^update: rank \d+( failed, so no rank went on)?: ", "", text)
    return text.split(" (and ")[0].split("; epoch ")[0]


def results(t):
    out = {"scores": t.scores(), "stats": t.stats, "epoch": t.epoch, "complete": t.complete}
    try:
        out["baselines"] = t.baseline_scores()
    except RuntimeError:
        out["baselines"] = None
    return out


# ---------------------------------------------------------------- scenarios (each written once)
def sc_run(ctx):
    # Duplicates (sampler padding), missing samples, uneven and empty batches, targets= baselines.
    t = ctx.make()
    for e in range(T):
        ctx.feed(t, e)
    assert t.stats["duplicates"] > 0 and t.stats["missing"] > 0
    return results(t)


def sc_prev_topk(ctx):
    t = ctx.make(prev_topk=2)
    for e in range(T):
        ctx.feed(t, e, targets=False)
    return results(t)


def sc_nonfinite(ctx):
    out = {}
    for mode in ("error", "skip"):
        t = ctx.make(on_nonfinite=mode)
        x, _, steps = epoch_data(0, ctx.world)
        x = x.clone()
        x[steps[0][-1][0]] = float("nan")  # the last rank's first row of the first step
        for per_rank in steps:
            ctx.step(t, 0, per_rank, logits=x)
        err = raised(t.end_epoch)
        if mode == "error":
            assert err[0] == "ValueError" and "non-finite" in err[1] and t.epoch == 0, err
            t.on_nonfinite = "skip"  # on every rank; then the same end_epoch closes the epoch
            err = (err[0], raised(t.end_epoch))
        assert t.epoch == 1 and t.stats["nonfinite"] >= 1
        for e in range(1, T):
            ctx.feed(t, e)
        out[mode] = (err, results(t))
    return out


def sc_out_of_range(ctx):
    # Out-of-range indices (one epoch) and labels (another) from one rank only. Eager paths: update()
    # raises on every rank and records nothing of the step. Sync-free: the rows are dropped and
    # counted, and end_epoch follows on_out_of_range as a single tracker on CUDA does.
    out = {}
    for mode in ("error", "skip"):
        t = ctx.make(on_out_of_range=mode)
        seen = []
        for e, (rows, labels) in enumerate((([N, N + 4, -1], None), ([1, 2], [C, -1]))):
            ctx.feed(t, e, close=False)
            bad = one_rank(ctx.world, rows)
            if labels is None:
                seen.append(raised(lambda: ctx.step(t, e, bad)))
            else:
                x, _, _ = epoch_data(e, ctx.world)
                ys = [torch.tensor(labels) if len(b) else torch.zeros(0, dtype=torch.int64) for b in bad]
                seen.append(raised(lambda: t.update(x[ctx.mine(bad)], ctx.mine(bad), ctx.mine(ys))))
            what = "index" if labels is None else "targets"
            if not ctx.deferred:
                assert seen[-1][0] == "ValueError" and f"{what}: expected" in seen[-1][1], seen[-1]
                assert raised(t.end_epoch) is None
            else:
                assert seen[-1] is None
                err = raised(t.end_epoch)
                if mode == "error":
                    assert err[0] == "ValueError" and err[1].startswith(f"{what}: ") and t.epoch == e, err
                    t.on_out_of_range = "skip"
                    assert raised(t.end_epoch) is None
                    t.on_out_of_range = "error"
                else:
                    assert err is None, err
            assert t.epoch == e + 1
        for e in range(2, T):
            ctx.feed(t, e)
        res = results(t)
        assert res["stats"].pop("out_of_range") == (5 if ctx.deferred else 0)
        out[mode] = res
    return out


def sc_save_load(ctx):
    # Save mid-epoch and at an epoch's end, load, go on: the uninterrupted run's results.
    whole, t = ctx.make(), ctx.make()
    _, _, steps = epoch_data(1, ctx.world)
    half = slice(0, len(steps) // 2)
    for tracker in (whole, t):
        ctx.feed(tracker, 0)
        ctx.feed(tracker, 1, steps=half, close=False)
    t.save(ctx.path("mid.pt"))
    t = ctx.load(ctx.path("mid.pt"))
    for tracker in (whole, t):
        ctx.feed(tracker, 1, steps=slice(len(steps) // 2, None))
        ctx.feed(tracker, 2)
    t.save(ctx.path("end.pt"))
    t = ctx.load(ctx.path("end.pt"))
    for tracker in (whole, t):
        ctx.feed(tracker, 3)
    got, want = results(t), results(whole)
    assert torch.equal(got["scores"], want["scores"]) and got["stats"] == want["stats"]
    return got


def sc_warnings(ctx):
    t = ctx.make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.end_epoch()  # nothing recorded
        ctx.feed(t, 1)
        t.scores()  # before a window has been folded
    return sorted({f"{w.category.__name__}: {str(w.message).split(':')[0]}" for w in caught})


def sc_errors(ctx):
    # One-line errors of a bad batch on every rank: the eager paths raise at update() and record
    # nothing; the sync-free exchange reports once at end_epoch, which closes the epoch.
    t = ctx.make()
    seen = []
    for e, bad in enumerate((torch.randn(2, C + 1), torch.randn(2, C).double())):
        if e:
            ctx.feed(t, e, close=False)  # this time after good steps (the exchange is set up)
        err = raised(lambda: t.update(bad, torch.tensor([0, 1])))
        if ctx.deferred:
            assert err is None
            err = raised(t.end_epoch)
        else:
            assert raised(t.end_epoch) is None
        assert t.epoch == e + 1
        seen.append((err[0], core(err[1])))
    for e in range(2, T):
        ctx.feed(t, e)
    first = results(t)
    if ctx.sharded:  # targets= on some ranks only; then a batch over the sync-free capacity
        t = ctx.make()
        ctx.feed(t, 0, close=False)
        x, y, steps = epoch_data(0, ctx.world)
        idx = steps[0][ctx.rank]
        err = raised(lambda: t.update(x[idx], idx, y[idx] if ctx.rank == 0 else None))
        if ctx.deferred:  # reported once by end_epoch, which closes the epoch
            err = raised(t.end_epoch)
        else:  # refused at update(): the next end_epoch closes the epoch
            assert raised(t.end_epoch) is None
        assert err[0] == "ValueError" and err[1].startswith("targets: ") and "on the others" in err[1], err
        assert t.epoch == 1
        big = torch.arange(ctx.rank, N, ctx.world)
        err = raised(lambda: t.update(x[big], big, y[big]))
        err = err or raised(t.end_epoch)
        if ctx.deferred:
            assert err[0] == "ValueError" and "max_batch_size=" in err[1] and t.epoch == 2, err
        else:
            assert err is None  # no capacity: recorded, and the epoch closed normally
        assert t.epoch == 2
    return {"errors": seen, **first}


SCENARIOS = {
    "run": sc_run,
    "prev_topk": sc_prev_topk,
    "nonfinite": sc_nonfinite,
    "out_of_range": sc_out_of_range,
    "save_load": sc_save_load,
    "warnings": sc_warnings,
    "errors": sc_errors,
}


def _every_variant(scenario):
    def run(rank, world, pg, tmp):
        return {v: scenario(Ctx(v, rank, world, pg, tmp)) for v in VARIANTS}

    return run


def _worker(rank, world, tmp):
    run_scenarios(rank, world, tmp, {name: _every_variant(fn) for name, fn in SCENARIOS.items()})


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def world_results(request, tmp_path_factory):
    return spawn(_worker, request.param, tmp_path_factory.mktemp(f"conformance{request.param}"))


def assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True, msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_conformance(world_results, scenario):
    failures = [f"rank {r}:\n{res[scenario][0]}" for r, res in enumerate(world_results) if res[scenario][0]]
    assert not failures, "\n".join(failures)
    for rank, res in enumerate(world_results):
        obs = res[scenario][1]
        for variant in VARIANTS[1:]:
            assert_same(obs[variant], obs["single"], f"rank {rank} {variant} vs single")
