"""Sharded TDDS state over torch.distributed: ``ShardedTDDSTracker(..., process_group=pg)``
(or ``make_tracker``, which picks it when a process group is given or torch.distributed runs).

The sharded tracker holds a TDDSTracker for this rank's shard (``local``: prev, seen, ring, score
of ≈ 1/W of the samples, the same backend ops) and a ShardLayout (layout.py: rank r owns the
samples n with ``n % W == r``, at local row ``n // W``).

Per step every rank calls ``update`` once (an empty batch is fine), as DDP loops do. The rows reach
their owners by one of two exchanges (eager.py, sync_free.py), chosen by ``sync_free`` (default: the group's backend):

- eager (gloo): one all_gather of a small control row (validity, epoch, dtype, rows per
  destination; the one host sync) lets every rank see every error, so a bad batch on one rank
  raises on all of them at that update (the bad rank gets the single tracker's message, the
  others the same text naming that rank), then one all_to_all_single sends each row to its owner;
- sync-free (NCCL): one all_gather of a fixed-size block per rank (capacity agreed once, at the
  first update with rows, or ``max_batch_size``), no host sync; every rank keeps the rows it owns,
  and errors are held on the device or host and raised on every rank by ``end_epoch``.

Either way the owner applies the rows in (source rank, batch) order: with duplicates in one step
(DistributedSampler padding) the lowest rank's row counts, as if a single tracker were fed the
ranks' batches concatenated in rank order.

``end_epoch`` is local apart from one small all_gather (one host sync) that makes every rank take
the same decision on the epoch's errors. ``scores()``, ``stats`` and ``baseline_scores()`` are collective
(call them on every rank); ``save``/``load`` write and read one file per rank (``shard_path``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..core import checkpoint
from ..core.baselines import PER_SAMPLE as BASELINE_PER_SAMPLE
from ..core.baselines import check_targets, scores_of
from ..core.config import TrackerConfig
from ..core.kept_mass import KeptMass
from ..core.state import PER_SAMPLE
from ..core.tracker import TDDSTracker, check_batch, check_state_dict
from ..ops.schema import COUNTERS
from .collectives import Group, agree_group
from .eager import EagerExchange
from .layout import OWNERSHIP, ShardLayout
from .shard_files import read_shard, shard_path
from .sync_free import SyncFreeExchange


class ShardedTDDSTracker:
    """A TDDSTracker's API over the ranks of `process_group`: this rank's shard lives in
    ``self.local`` (a TDDSTracker), the ownership in ``self.layout`` (module docstring).

    sync_free: the exchange (module docstring); None: sync-free for NCCL, else eager. max_batch_size:
    rows per rank per step the sync-free exchange carries (None: the ranks' largest first batch)."""

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        window: int = 10,
        decay: float = 0.9,
        trajectory_len: int | None = 30,
        device="cpu",
        storage_dtype=torch.float32,
        backend: str = "auto",
        on_nonfinite: str = "error",
        debug: bool = False,
        process_group=None,
        baseline_options: dict | None = None,
        on_out_of_range: str = "error",
        sync_free: bool | None = None,
        max_batch_size: int | None = None,
        prev_topk: int | None = None,
    ):
        if process_group is None:
            raise ValueError("process_group: expected a torch.distributed process group, got None")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("process_group: torch.distributed is not initialized")
        self.config = TrackerConfig(num_samples, num_classes, window, decay, trajectory_len, storage_dtype, prev_topk)
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        if self.config.num_samples < self.world_size:
            raise ValueError(
                f"num_samples: expected >= the world size ({self.world_size}) so every "
                f"rank owns a sample, got {num_samples}"
            )
        self.layout = ShardLayout(self.config.num_samples, self.world_size)
        self.local = TDDSTracker(
            self.layout.shard_size(self.rank),
            num_classes,
            window,
            decay,
            trajectory_len,
            device,
            storage_dtype,
            backend,
            on_nonfinite,
            debug,
            baseline_options=baseline_options,
            on_out_of_range=on_out_of_range,
            prev_topk=prev_topk,
        )
        self._group = Group(process_group, self.local.device)
        if dist.get_backend(process_group) == "nccl" and self.device.type != "cuda":
            raise ValueError(f"device: expected a cuda device for an NCCL process group, got {self.device}")
        if sync_free is None:  # NCCL: no host sync per step; gloo (CPU): errors raise at update
            sync_free = dist.get_backend(process_group) == "nccl"
        if max_batch_size is not None and (
            isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1
        ):
            raise ValueError(f"max_batch_size: expected None or an int >= 1, got {max_batch_size!r}")
        if sync_free:
            self._exchange = SyncFreeExchange(self._group, self.layout, self.local, max_batch_size)
        else:
            self._exchange = EagerExchange(self._group, self.layout, self.local)
        # Ties the shard files of one run together; rank 0's draw, agreed by the first collective.
        self._run_id = int(self._group.gather_rows(torch.tensor([int.from_bytes(os.urandom(7), "little")]))[0, 0])
        self._saves = 0

    # ------------------------------------------------------------------ properties
    num_samples = property(lambda self: self.config.num_samples)
    num_classes = property(lambda self: self.config.num_classes)
    window = property(lambda self: self.config.window)
    decay = property(lambda self: self.config.decay)
    trajectory_len = property(lambda self: self.config.trajectory_len)
    storage_dtype = property(lambda self: self.config.storage_dtype)
    prev_topk = property(lambda self: self.config.prev_topk)
    device = property(lambda self: self.local.device)
    backend = property(lambda self: self.local.backend)
    debug = property(lambda self: self.local.debug)
    epoch = property(lambda self: self.local.epoch)
    complete = property(lambda self: self.local.complete)
    shard_size = property(lambda self: self.local.num_samples)
    # Rows this rank's shard received (eager) or this rank passed (sync-free): the sum over the
    # ranks, what a whole-dataset state dict holds, is the same.
    rows_in_epoch = property(lambda self: self.local.rows_in_epoch)

    @property
    def on_nonfinite(self) -> str:
        return self.local.on_nonfinite

    @on_nonfinite.setter
    def on_nonfinite(self, value: str) -> None:
        self.local.on_nonfinite = value

    @property
    def on_out_of_range(self) -> str:
        # The eager exchange raises on bad indices and labels at update(); the sync-free one drops
        # and counts those rows, and end_epoch follows this option as a single tracker does.
        return self.local.on_out_of_range

    @on_out_of_range.setter
    def on_out_of_range(self, value: str) -> None:
        self.local.on_out_of_range = value

    @property
    def sync_free(self) -> bool:
        """Whether updates use the sync-free exchange (errors held until end_epoch) or the eager one."""
        return self._exchange.sync_free

    # ------------------------------------------------------------------ plumbing
    def _gather_parts(self, local: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's per-sample rows (padded to equal size for the all_gather), in rank order."""
        pad = self.layout.padded_size - local.shape[0]
        if pad:
            local = torch.cat([local, local.new_zeros((pad, *local.shape[1:]))])
        stacked = self._group.gather_rows(local)
        return [stacked[r, : self.layout.shard_size(r)] for r in range(self.world_size)]

    def _gather_shards(self, local: torch.Tensor) -> torch.Tensor:
        """The (N, ...) tensor by dataset index from every rank's (local_n, ...) shard."""
        return self.layout.interleave(self._gather_parts(local))

    # ------------------------------------------------------------------ recording
    def update(self, logits: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Record this rank's batch of the current step; collective: every rank calls it once per step."""
        exc = None
        try:
            check_batch(logits, index, self.num_classes, self.device)
            if targets is not None:
                # The baselines' own checks, made here because after routing they would fire on the owner.
                check_targets(targets, logits)
        except (TypeError, ValueError) as e:
            exc = e
        if self.complete:  # every rank completes at the same end_epoch: no collective needed
            if exc is not None:
                raise exc
            return
        self._exchange.update(logits, index, targets, exc)

    def end_epoch(self) -> None:
        """Close the epoch on every rank (collective); the same decision and message on every rank
        (distributed/verdict.py): an error an option covers raises and leaves the epoch open; what
        the sync-free updates held is reported once, after the epoch is closed without those rows."""
        if self.complete:
            return
        new = self.local.epoch_counts()
        verdict = self._exchange.end_epoch(
            {
                "out_of_range": new["out_of_range"],
                "nonfinite": new["nonfinite"],
                "nonfinite_error": self.on_nonfinite == "error",
                "out_of_range_error": self.on_out_of_range == "error",
            }
        )
        exc = verdict.open_error(self.epoch, self.num_samples, self.num_classes)
        if exc is not None:
            raise exc
        closed = self.epoch
        self.local.end_epoch()  # its own checks pass: the options are "skip" wherever counts are
        self._exchange.forget_errors()
        exc = verdict.closing_error(closed)
        if exc is not None:
            raise exc

    # ------------------------------------------------------------------ results (collective)
    @property
    def stats(self) -> dict[str, int]:
        """Counters summed over the ranks (collective: read it on every rank)."""
        self._group.every_rank_here("stats")
        mine = self.local.stats
        summed = self._group.gather_rows(torch.tensor([mine[k] for k in COUNTERS])).sum(dim=0).tolist()
        out = dict(zip(COUNTERS, (int(v) for v in summed)), epochs=mine["epochs"], windows=mine["windows"])
        if "kept_mass" in mine:  # prev_topk: the mean over every rank's samples of the last epoch
            out["kept_mass"] = KeptMass.mean_of(self._group.gather_rows(self.local.kept_mass.weighted()))
        return out

    def scores(self) -> torch.Tensor:
        """(N,) float32 scores by dataset index on every rank (collective)."""
        self._group.every_rank_here("scores()")
        return self._gather_shards(self.local.scores())

    def baseline_scores(self) -> dict[str, torch.Tensor]:
        """The baselines over all N samples on every rank (collective)."""
        self._group.every_rank_here("baseline_scores()")
        local = self.local.baseline_state_dict()
        if local is None:  # the same on every rank: update() agrees on whether targets came
            raise RuntimeError("baseline_scores: no targets were passed to update(), so no baselines were tracked")
        # From the whole dataset's state: "never learned" ranks above the largest forgetting count
        # of the whole dataset, not of the shard.
        return scores_of({key: self._gather_shards(local[key]) for key in BASELINE_PER_SAMPLE})

    def __repr__(self):
        return (
            f"ShardedTDDSTracker({self.config.describe()}, device='{self.device}', backend='{self.backend}', "
            f"epoch={self.epoch}, complete={self.complete}, rank={self.rank}, world_size={self.world_size}, "
            f"shard_size={self.shard_size})"
        )

    # ------------------------------------------------------------------ checkpoints
    def _shard_info(self) -> dict:
        return {
            "world_size": self.world_size,
            "rank": self.rank,
            "num_samples": self.num_samples,
            "ownership": OWNERSHIP,
            "run_id": self._run_id,
            "saves": self._saves,
            "capacity": self._exchange.capacity,
        }

    def state_dict(self) -> dict:
        """This rank's shard: a TDDSTracker state dict of the shard plus a "shard" entry."""
        return {**self.local.state_dict(), "shard": self._shard_info()}

    def load_state_dict(self, sd: dict) -> None:
        """Restore this rank's shard from state_dict() (collective): every rank validates its own
        shard, the ranks agree that every shard fits and that they belong together (one run, one
        save, one epoch), then every rank applies its shard; else every rank raises, none changes."""
        apply, info, exc = None, None, None
        ids = torch.full((3,), -1, dtype=torch.int64)
        try:
            info = self._check_shard_info(sd)
            apply = self.local.prepare_load({k: v for k, v in sd.items() if k != "shard"})
            ids = torch.tensor([info["run_id"], info["saves"], sd["epoch"]])
        except Exception as e:  # any failure must reach the agreement, or the other ranks wait
            exc = e
        self._group.agree(exc, "load_state_dict")
        ids = self._group.gather_rows(ids)
        if not bool((ids == ids[0]).all()):
            raise ValueError(
                f"state_dict: the ranks' shards do not belong together (run id, save count, epoch per rank: "
                f"{ids.tolist()}); was a save interrupted? Nothing was loaded"
            )
        apply()
        self._exchange.forget_errors()  # what sync-free updates held belongs to the replaced state
        if self._exchange.sync_free:
            # the capacity agreed before the save: a resumed run may start at an epoch's short last batch
            self._exchange.capacity = self._exchange.capacity or info.get("capacity")
        self._run_id, self._saves = info["run_id"], info["saves"]

    def _check_shard_info(self, sd) -> dict:
        info = sd.get("shard") if isinstance(sd, dict) else None
        if not isinstance(info, dict):
            raise ValueError(
                "state_dict: not a shard of a ShardedTDDSTracker (no 'shard' entry); "
                "use load_full_state_dict() for a single tracker's state"
            )
        mine = self._shard_info()
        for key in ("world_size", "rank", "num_samples", "ownership"):
            if info.get(key) != mine[key]:
                # Rank r given rank 0's shard: a tool that saves on the main process only (e.g.
                # Accelerate's register_for_checkpointing) saved one rank's shard for all.
                hint = (
                    "; a checkpoint written by the main process alone holds only its shard: with Accelerate, "
                    "register integrations.accelerate.TrackerState(tracker), not the tracker"
                    if key == "rank"
                    else ""
                )
                raise ValueError(
                    f"state_dict: shard {key}: tracker has {mine[key]!r}, state dict has {info.get(key)!r}{hint}"
                )
        for key in ("run_id", "saves"):
            if isinstance(info.get(key), bool) or not isinstance(info.get(key), int):
                raise ValueError(f"state_dict: shard {key}: expected an int, got {info.get(key)!r}")
        return info

    def save(self, path, final: bool = False) -> None:
        """Write this rank's shard to shard_path(path, rank, world_size) atomically (collective:
        returns once every rank has written its file, raises on every rank if one failed).
        final=True (a complete tracker only): without the recording state, as TDDSTracker.save."""
        self._group.every_rank_here("save()")
        self._saves += 1
        exc = None
        try:
            sd = self.state_dict()
            sd = checkpoint.final_state(sd) if final else sd
            checkpoint.save_atomic(sd, shard_path(path, self.rank, self.world_size))
        except Exception as e:  # a full disk on one rank must not leave the others waiting
            exc = e
        self._group.agree(exc, "save")

    @classmethod
    def load(cls, path, device=None, backend="auto", process_group=None, sync_free=None) -> ShardedTDDSTracker:
        """Each rank reads its shard of the checkpoint `path` written by save() (collective). The
        world size must equal the one that saved; every rank raises if a shard is missing, does
        not fit, or belongs to another run or another save than the rest."""
        if process_group is None:
            raise ValueError("process_group: expected the process group to load the shards into")
        world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        sd = exc = config = None
        try:
            sd, config = read_shard(path, rank, world)
        except Exception as e:
            exc = e
        agree_group(process_group, exc, "load")  # before the constructor's collective
        tracker = cls(
            **config.to_dict() | {"storage_dtype": config.storage_dtype},
            device=device or "cpu",
            backend=backend,
            on_nonfinite=sd.get("on_nonfinite", "error"),
            process_group=process_group,
            sync_free=sync_free,
        )
        try:
            tracker.load_state_dict(sd)  # collective: raises on every rank, or applies on every rank
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return tracker

    # ------------------------------------------------------------------ whole-dataset state
    def full_state_dict(self) -> dict:
        """The state a single TDDSTracker would have, assembled on every rank (collective; N·C
        memory on each rank while it lasts). Loadable by TDDSTracker.load_state_dict and by
        load_full_state_dict() at any world size: the way to change the number of ranks."""
        self._group.every_rank_here("full_state_dict()")
        mine = self.local.state_dict()
        # Per-sample tensors travel as padded all_gathers, the small rest as objects; then the
        # layout merges the shards exactly as merge_shards merges files.
        small = {k: v for k, v in mine.items() if k not in PER_SAMPLE and k != "baselines"}
        small["baselines"] = None  # a state dict always carries the entry (None: no targets yet)
        if mine.get("baselines") is not None:
            small["baselines"] = {k: v for k, v in mine["baselines"].items() if k not in BASELINE_PER_SAMPLE}
        shards = [None] * self.world_size
        dist.all_gather_object(shards, small, group=self.process_group)
        for key in (k for k in PER_SAMPLE if k in mine):  # the config decides which it holds
            for sd, part in zip(shards, self._gather_parts(mine[key])):
                sd[key] = part.cpu()
        if mine.get("baselines") is not None:
            for key in BASELINE_PER_SAMPLE:
                for sd, part in zip(shards, self._gather_parts(mine["baselines"][key])):
                    sd["baselines"][key] = part.cpu()
        return self.layout.merge_states(shards)

    def load_full_state_dict(self, sd: dict) -> None:
        """Take this rank's rows of a single tracker's state dict (full_state_dict(), or a
        TDDSTracker's): resumes on any world size. Collective (agrees on errors)."""
        exc = apply = None
        try:
            # The whole dict first (splitting fills in the per-rank bookkeeping), then this rank's
            # part; nothing changes on any rank until every rank has validated its part.
            check_state_dict(self.config, sd)
            apply = self.local.prepare_load(self.layout.split_state(sd, self.rank))
        except Exception as e:  # any failure must reach the agreement, or the other ranks wait
            exc = e
        self._group.agree(exc, "load_full_state_dict")
        apply()
        self._exchange.forget_errors()  # what sync-free updates held belongs to the replaced state
