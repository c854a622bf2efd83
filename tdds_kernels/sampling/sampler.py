"""PruningSampler: one training run that scores the data with TDDS and then trains on the kept set.

    tracker = tk.make_tracker(len(train_set), C, trajectory_len=T)
    sampler = tk.PruningSampler(tracker, prune_fraction=0.5, seed=0)
    loader = DataLoader(tk.IndexedDataset(train_set), batch_size=B, sampler=sampler)
    for epoch in range(E):
        sampler.set_epoch(epoch)
        for x, y, idx in loader:
            ...; tracker.update(logits.detach(), idx)   # a no-op once the tracker is complete
        tracker.end_epoch()

Epochs 0 … T−1 (T = tracker.trajectory_len, `switch_epoch`) yield every index, reshuffled each
epoch; from epoch T on, only the kept set that `select_coreset` chooses from the complete
tracker's scores, reshuffled each epoch. The kept set is chosen once, when epoch T begins
(set_epoch(T) or the first iteration of it): on a sharded tracker that is a collective, so every
rank must reach it, as every rank calls set_epoch and iterates its loader under DDP.

Resume (docs/in_run.md): state_dict() holds the epoch, the position within it, the seed and the
kept set (with the scores it came from); after load_state_dict() the next iteration continues
the saved epoch from its position, so the loader skips the batches already done.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..core.selection import STRATEGIES, num_kept, select_coreset
from . import order
from .state import FORMAT, check_state

_NEEDS_LABELS = ("class_balanced",)


def _int(name: str, value, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


def _ranks(tracker, num_replicas, rank) -> tuple[int, int]:
    """DistributedSampler's defaults, read from the tracker's process group when it is sharded."""
    group = tracker.process_group  # None for a single tracker (core/protocol.py)
    if num_replicas is None:
        if group is not None:
            num_replicas = dist.get_world_size(group)
        else:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        if group is not None:
            rank = dist.get_rank(group)
        else:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    _int("num_replicas", num_replicas, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank: expected an int in [0, {num_replicas}), got {rank!r}")
    return num_replicas, rank


class PruningSampler(Sampler[int]):
    """A ``torch.utils.data.Sampler`` over dataset indices 0 … N−1 fed by a TDDS tracker.

    prune_fraction: the share dropped at the switch, in (0, 1) (int(p·N) dropped, as select()).
    strategy, labels, strategy_options: as ``tk.select_coreset`` (labels (N,) for class_balanced).
    seed: the shuffles (``seed + epoch``, as DistributedSampler) and the random strategies.
    num_replicas, rank, drop_last: as DistributedSampler (None: the tracker's process group, or
    the default one when torch.distributed is initialized, else one rank).
    shuffle: reshuffle every epoch (False: ascending dataset order).
    epoch_length: "pruned" (an epoch after the switch is the kept set once), "repeat" or
    "replacement" (it stays N samples, cycling through shuffles of the kept set or drawing from it
    with replacement), so the steps per epoch do not change.
    dataset: when given, its length must be the tracker's N.
    """

    def __init__(
        self,
        tracker,
        prune_fraction: float,
        strategy: str = "top",
        labels=None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        shuffle: bool = True,
        epoch_length: str = "pruned",
        dataset=None,
        strategy_options: dict | None = None,
    ):
        for member in ("num_samples", "trajectory_len", "complete", "scores", "process_group"):
            if not hasattr(type(tracker), member) and not hasattr(tracker, member):
                raise TypeError(f"tracker: expected a TDDSTracker or ShardedTDDSTracker, got {type(tracker).__name__}")
        if tracker.trajectory_len is None:
            raise ValueError("tracker: expected a trajectory_len (a tracker with trajectory_len=None never completes)")
        n = int(tracker.num_samples)
        if dataset is not None and len(dataset) != n:
            raise ValueError(f"dataset: expected {n} samples to match tracker.num_samples, got {len(dataset)}")
        if isinstance(prune_fraction, bool) or not isinstance(prune_fraction, (int, float)):
            raise TypeError(f"prune_fraction: expected a fraction in (0, 1), got {prune_fraction!r}")
        if not 0.0 < float(prune_fraction) < 1.0:
            raise ValueError(f"prune_fraction: expected a fraction in (0, 1), got {prune_fraction!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
        if strategy in _NEEDS_LABELS and labels is None:
            raise ValueError(f"labels: strategy {strategy!r} needs the dataset's labels, shape ({n},), got None")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (n,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(
                    f"labels: expected integer class labels of shape ({n},), got {labels.dtype} {tuple(labels.shape)}"
                )
            labels = labels.to("cpu", torch.int64)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        if epoch_length not in order.EPOCH_LENGTHS:
            raise ValueError(f"epoch_length: expected one of {order.EPOCH_LENGTHS}, got {epoch_length!r}")
        options = dict(strategy_options or {})
        # A dry run on stand-in scores: a bad option fails here, not T epochs into the run.
        select_coreset(strategy, torch.arange(n, dtype=torch.float32), labels, prune_fraction, seed=seed, **options)
        self.num_replicas, self.rank = _ranks(tracker, num_replicas, rank)
        self.tracker, self.num_samples = tracker, n
        self.prune_fraction, self.strategy, self.labels = float(prune_fraction), strategy, labels
        self.strategy_options, self.seed, self.shuffle = options, seed, bool(shuffle)
        self.drop_last, self.epoch_length = bool(drop_last), epoch_length
        self.num_kept = num_kept(n, prune_fraction)
        if self.num_kept == n:
            warnings.warn(
                f"prune_fraction: {prune_fraction!r} of {n} samples prunes none (int(p·N) = 0)",
                RuntimeWarning,
                stacklevel=2,
            )
        self.epoch = 0
        self._kept = self._scores = None
        self._verify = False  # the kept set still has to be compared across ranks
        self._position = 0  # indices of this epoch this rank has handed out
        self._resume_at = 0  # a loaded mid-epoch position the next iteration starts from
        self._started = False  # an iteration of this epoch has begun
        self._set_epoch_called = self._warned = False
        self._loaded = False  # a state was loaded and no epoch has been set or iterated since

    # ------------------------------------------------------------------ what an epoch holds
    @property
    def switch_epoch(self) -> int:
        """The first epoch that yields only the kept set: the tracker's trajectory_len."""
        return int(self.tracker.trajectory_len)

    @property
    def kept(self) -> torch.Tensor | None:
        """Kept dataset indices (int64, ascending) once chosen, else None."""
        return self._kept

    @property
    def scores(self) -> torch.Tensor | None:
        """The (N,) scores the kept set was chosen from (CPU float32) once chosen, else None."""
        return self._scores

    def pruned(self, epoch: int) -> bool:
        return _int("epoch", epoch) >= self.switch_epoch

    def epoch_samples(self, epoch: int) -> int:
        """Indices this rank yields in `epoch` (the sampler's len() in that epoch)."""
        size = order.epoch_size(self.num_samples, self.num_kept, self.pruned(epoch), self.epoch_length)
        return order.rank_length(size, self.num_replicas, self.drop_last)

    def __len__(self) -> int:
        return self.epoch_samples(self.epoch)

    def steps_per_epoch(self, epoch: int, batch_size: int, drop_last: bool = False) -> int:
        """Batches this rank takes in `epoch`; drop_last is the DataLoader's."""
        return order.steps(self.epoch_samples(epoch), _int("batch_size", batch_size, 1), drop_last)

    def schedule(self, epochs: int, batch_size: int, drop_last: bool = False) -> order.Schedule:
        """Steps per epoch before and after the switch and the run's total (for OneCycleLR,
        CosineAnnealingLR, a Trainer's max_steps): per rank, with the DataLoader's batch_size and
        drop_last. Divide by gradient-accumulation steps where the optimizer steps less often."""
        last = max(self.switch_epoch, 0)
        return order.schedule(
            epochs, self.switch_epoch, self.epoch_samples(0), self.epoch_samples(last), batch_size, drop_last
        )

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (call on every rank before iterating it). The first call after
        load_state_dict() with the saved epoch resumes it at the saved position (an epoch saved
        after its last batch then yields nothing); any other call starts the epoch afresh.
        At the switch epoch the kept set is chosen here (collective for a sharded tracker)."""
        epoch = _int("epoch", epoch)
        if self._loaded and epoch == self.epoch:  # the loop resumes the saved epoch: keep its position
            self._started = False
        elif epoch != self.epoch or self._started:
            self.epoch, self._position, self._resume_at, self._started = epoch, 0, 0, False
        self._set_epoch_called, self._loaded = True, False
        self._prepare(epoch)

    def _prepare(self, epoch: int) -> None:
        """Check the tracker agrees with the epoch; choose (and agree on) the kept set at the switch."""
        complete = bool(self.tracker.complete)
        if self.pruned(epoch) and self._kept is None and not complete:
            raise RuntimeError(
                f"tracker: epoch {epoch} comes after the trajectory (trajectory_len={self.switch_epoch}) "
                f"but the tracker has closed {self.tracker.epoch} epochs; call tracker.end_epoch() once per epoch"
            )
        if not self.pruned(epoch) and complete:
            raise RuntimeError(
                f"epoch: the tracker completed its {self.switch_epoch} epochs but the sampler is at epoch "
                f"{epoch}; call sampler.set_epoch(epoch) with the training loop's epoch"
            )
        if self.pruned(epoch) and self._kept is None:
            scores = self.tracker.scores().detach().to("cpu", torch.float32)  # collective when sharded
            kept = select_coreset(
                self.strategy,
                scores,
                self.labels,
                prune_fraction=self.prune_fraction,
                seed=self.seed,
                **self.strategy_options,
            )
            self._kept, self._scores, self._verify = kept, scores, True
        if self._verify:
            self._agree()

    def _agree(self) -> None:
        """Every rank must hold the same kept set: compare a fingerprint of it (3 ints per rank)."""
        self._verify = False
        group = self.tracker.process_group
        if group is None:
            if self.num_replicas == 1 or not (dist.is_available() and dist.is_initialized()):
                return
            group = dist.group.WORLD
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        k = self._kept
        mine = torch.stack([torch.tensor(k.numel()), k.sum(), ((k * 2654435761) ^ (k >> 7)).sum()]).to(device)
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, mine, group=group)
        differ = [r for r, t in enumerate(every) if not torch.equal(t, every[0])]
        if differ:
            raise RuntimeError(
                f"kept set: rank {differ[0]} chose a different kept set than rank 0; every rank needs the "
                "same scores (a sharded tracker: tk.make_tracker), labels, strategy and seed"
            )

    def __iter__(self):
        if self._started:  # iterating again without set_epoch: the next epoch
            if self.num_replicas > 1 and not self._set_epoch_called and not self._warned:
                self._warned = True
                order.warn_unset_epoch(self.num_replicas)
            self.epoch, self._position, self._resume_at = self.epoch + 1, 0, 0
        self._loaded = False
        self._prepare(self.epoch)
        mine = self._rank_order(self.epoch).tolist()
        start, self._resume_at, self._started = self._resume_at, 0, True
        self._position = start
        return self._hand_out(mine, start)

    def _hand_out(self, indices: list[int], start: int):
        for i in range(start, len(indices)):
            self._position = i + 1  # counted before the yield: a batch sampler holding it has taken it
            yield indices[i]

    def _rank_order(self, epoch: int) -> torch.Tensor:
        whole = order.epoch_order(
            self.num_samples,
            self._kept if self.pruned(epoch) else None,
            epoch,
            self.seed,
            self.shuffle,
            self.epoch_length,
        )
        return order.split_for_rank(whole, self.num_replicas, self.rank, self.drop_last)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices of `epoch`, in order (epochs after the switch need the kept set)."""
        if self.pruned(epoch) and self._kept is None:
            raise RuntimeError(f"epoch: {epoch} is after the switch and the kept set is not chosen yet")
        return self._rank_order(_int("epoch", epoch))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, samples_done: int | None = None) -> dict:
        """Epoch, position in it, seed, the kept set and its scores (CPU tensors).

        The position is the count of this epoch's indices this rank has handed to the loader,
        exact with ``num_workers=0``. A loader with workers fetches ahead of the training step,
        so pass ``samples_done=steps_done_in_epoch * batch_size`` there."""
        position = self._position
        if samples_done is not None:
            position = _int("samples_done", samples_done)
            if position > len(self):
                raise ValueError(f"samples_done: expected at most {len(self)} (this epoch's samples), got {position}")
        return {
            "format": FORMAT,
            "num_samples": self.num_samples,
            "num_replicas": self.num_replicas,
            "prune_fraction": self.prune_fraction,
            "strategy": self.strategy,
            "epoch_length": self.epoch_length,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "strategy_options": dict(self.strategy_options),
            "seed": self.seed,
            "epoch": self.epoch,
            "position": position,
            "finished": self._started and position >= len(self),
            "kept": None if self._kept is None else self._kept.clone(),
            "scores": None if self._scores is None else self._scores.clone(),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore state_dict() (the seed included); all or nothing. The kept set is compared
        across ranks at the next set_epoch or iteration."""
        epoch, position, finished, seed, kept, scores = check_state(self, sd)
        self.seed, self.epoch, self._kept, self._scores = seed, epoch, kept, scores
        self._verify = kept is not None
        self._started, self._position, self._resume_at, self._loaded = finished, position, position, True
