"""PyTorch Lightning callback that records TDDS scores while a LightningModule trains.

    def training_step(self, batch, batch_idx):
        x, y, idx = batch                          # tdds_kernels.IndexedDataset adds idx
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        return {"loss": loss, "logits": logits, "index": idx}

    cb = TDDSCallback(num_samples=len(train_set), num_classes=10, trajectory_len=30)
    pl.Trainer(max_epochs=30, callbacks=[cb]).fit(model, loader)
    cb.scores                                      # (N,) on every rank once fit ends

Under DDP (one process per device) the state is sharded over the ranks (tdds_kernels.distributed):
each rank holds ≈ 1/world of it and every rank gets the full scores. The callback's state rides in
Lightning checkpoints: it is stored as a single tracker's state (any world size can resume it) and
restored with the trainer's state. Once the tracker is complete, checkpoints carry only what the
scores and stats need (no N x C state: see `final_state`).

Resume is exact from checkpoints taken at an epoch's end (``ModelCheckpoint`` with its default
``every_n_epochs=1``, also when it saves at validation end before the epoch closes). From a
checkpoint taken in the middle of an epoch (``every_n_train_steps``), Lightning with a plain
DataLoader restarts that epoch's data from its first batch and runs only the steps left: the
samples of the first batches are recorded a second time (duplicates; their first record is kept)
and those of the epoch's last batches are not recorded in it (missing). The callback warns then,
except for a torchdata ``StatefulDataLoader`` with its own sampler (shuffle=True/False, no
generator), which Lightning resumes at its position: exact (``restores_position``).
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch.utils.data import SequentialSampler

from . import missing_extra

try:  # the `pytorch-lightning` distribution; the unified `lightning` one as a fallback
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise missing_extra(__name__, "pytorch-lightning", "lightning") from None

from ..core.checkpoint import expand_final_state, final_state
from ..core.protocol import Tracker
from ..distributed.factory import make_tracker
from .epoch_orders import EpochOrders
from .pruning import check_options as pruning_options
from .pruning import make_sampler


def is_stateful_loader(loader) -> bool:
    """Whether `loader` is a torchdata StatefulDataLoader (Lightning saves and restores its state)."""
    module = sys.modules.get("torchdata.stateful_dataloader")  # not imported: the loader is not one
    return module is not None and isinstance(loader, module.StatefulDataLoader)


def restores_position(loader) -> bool:
    """Whether Lightning resumes `loader` at its position inside an epoch: a StatefulDataLoader
    drawing from the sampler it made itself (shuffle=True or False) without a generator= of its
    own, measured exact (tests/app/test_lightning_resume_order.py). Not otherwise: given a
    DistributedSampler, or shuffle=True with a seeded generator, the resumed run's batches or
    scores were not the uninterrupted run's (measured)."""
    if not is_stateful_loader(loader) or loader.generator is not None:
        return False
    from torchdata.stateful_dataloader.sampler import BatchSampler, RandomSampler

    own = type(loader.batch_sampler) is BatchSampler and loader.batch_sampler.sampler is loader.sampler
    return own and type(loader.sampler) in (RandomSampler, SequentialSampler)


def all_batches_done(trainer) -> bool:
    """Whether the restored run had trained every batch of its open epoch (a checkpoint at
    validation end, before the epoch closed): Lightning then only closes that epoch, exactly."""
    try:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        total = trainer.num_training_batches
    except AttributeError:  # another Lightning's loop layout: treated as mid-epoch (a warning)
        return False
    return total != float("inf") and done >= total


class TDDSCallback(pl.Callback):
    """Feeds ``training_step``'s logits and dataset indices to a TDDSTracker, one epoch per
    training epoch. `logits_key` / `index_key` (and optionally `targets_key`, for the baseline
    scores) name the entries of the dict that ``training_step`` returns; the remaining keyword
    arguments go to TDDSTracker.

    `pruning` (PruningSampler's arguments, e.g. ``dict(prune_fraction=0.5)``) prunes inside this
    run: ``train_dataloader()`` passes ``sampler=callback.sampler``, which yields every sample
    until the trajectory completes and the kept set after (docs/in_run.md). Under DDP the sampler
    splits the epochs over the ranks itself: ``Trainer(use_distributed_sampler=False)``."""

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        logits_key: str = "logits",
        index_key: str = "index",
        targets_key: str | None = None,
        pruning: dict | None = None,
        **tracker_kwargs,
    ):
        if "device" in tracker_kwargs or "process_group" in tracker_kwargs:
            raise ValueError("device / process_group: set by the callback from the trainer")
        self._pruning = None if pruning is None else pruning_options(pruning)
        self._sampler = None
        self.num_samples, self.num_classes = num_samples, num_classes
        self.logits_key, self.index_key, self.targets_key = logits_key, index_key, targets_key
        self.tracker_kwargs = tracker_kwargs
        self.tracker: Tracker | None = None
        self.scores: torch.Tensor | None = None  # (N,) CPU copy, set when fit ends (every rank)
        self._pending: dict | None = None  # a checkpoint's state, loaded once the tracker exists
        self._restored_rows: int | None = None  # rows of the open epoch in the restored checkpoint
        self._orders = EpochOrders()  # notices a resume that replays an earlier epoch's order
        if self._pruning is not None:  # bad options fail here, not when training starts
            make_sampler(self, tracker_kwargs, self._pruning, num_replicas=1, rank=0)

    @property
    def sampler(self):
        """The PruningSampler of the `pruning` option, made on first use (from train_dataloader(),
        once Lightning has set up the ranks); None without the option."""
        if self._pruning is not None and self._sampler is None:
            self._sampler = make_sampler(self, self.tracker_kwargs, self._pruning)
        return self._sampler

    @property
    def state_key(self) -> str:
        return f"TDDSCallback[N={self.num_samples},C={self.num_classes}]"

    def _build(self, trainer, pl_module):
        # Built when training starts: by then the module sits on its device and DDP is set up.
        # make_tracker resolves the process group (DDP's default group when world > 1)
        self.tracker = make_tracker(self.num_samples, self.num_classes, device=pl_module.device, **self.tracker_kwargs)
        if self._pending is not None:
            self.tracker.load_full_state_dict(self._pending)
            self._pending = None

    def on_train_start(self, trainer, pl_module):
        if self.tracker is None:
            self._build(trainer, pl_module)
        if self._sampler is not None and trainer.world_size > 1:
            loader = trainer.train_dataloader
            if getattr(loader, "sampler", None) is not self._sampler:
                raise RuntimeError(
                    "TDDSCallback: the train loader's sampler is not callback.sampler (Lightning wrapped it in "
                    "its distributed sampler); pass Trainer(use_distributed_sampler=False), the sampler "
                    "splits the epochs over the ranks itself"
                )
        # A checkpoint taken after an epoch's last batch but before its end (every_n_train_steps
        # on that step) resumes at the next epoch: close the pending one. One taken at validation
        # end resumes in the epoch with its batches done, and Lightning closes it.
        open_epoch = self.tracker.epoch
        while self.tracker.epoch < trainer.current_epoch and not self.tracker.complete:
            self.tracker.end_epoch()
        rows, self._restored_rows = self._restored_rows, None
        if not rows or self.tracker.complete:
            return
        loader = trainer.train_dataloader
        if open_epoch == trainer.current_epoch and not restores_position(loader) and not all_batches_done(trainer):
            warnings.warn(
                f"TDDSCallback: the checkpoint was taken in the middle of epoch {open_epoch} ({rows} rows "
                "recorded). Unless the train loader restores its position (a torchdata StatefulDataLoader "
                "with shuffle=True/False, no sampler or generator of its own), Lightning restarts its data "
                "from its first batch and runs only the steps left: samples of the first batches are "
                "recorded again (counted as duplicates, the first record kept) and samples of the epoch's "
                "last batches go unrecorded in it (missing), so the scores differ from an uninterrupted "
                "run. Resume from a checkpoint taken at an epoch's end for exact scores",
                RuntimeWarning,
                stacklevel=2,
            )
        elif open_epoch < trainer.current_epoch and is_stateful_loader(loader):
            warnings.warn(
                f"TDDSCallback: the checkpoint was taken after epoch {open_epoch}'s last batch, before the "
                "epoch ended; the StatefulDataLoader restored there has no batches left and yields none "
                f"in epoch {open_epoch + 1}, whose samples go unrecorded (missing), so the scores differ "
                "from an uninterrupted run. With a StatefulDataLoader, resume from a checkpoint taken "
                "inside an epoch, or at an epoch's end with shuffle=False (docs/trainers.md)",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if outputs is None:
            # A skipped step still records an empty batch: under DDP every rank takes part in the
            # exchange, and a missing call would leave the others waiting.
            logits = torch.empty(0, self.num_classes, device=self.tracker.device)
            index, targets = torch.empty(0, dtype=torch.int64, device=self.tracker.device), None
            if self.targets_key is not None:
                targets = torch.empty(0, dtype=torch.int64, device=self.tracker.device)
        else:
            if not isinstance(outputs, dict) or self.logits_key not in outputs or self.index_key not in outputs:
                got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
                raise KeyError(
                    f"TDDSCallback: training_step must return a dict with {self.logits_key!r} "
                    f"and {self.index_key!r} (besides 'loss'); got {got}"
                )
            logits, index = outputs[self.logits_key], outputs[self.index_key]
            targets = outputs[self.targets_key] if self.targets_key is not None else None
        self.tracker.update(logits.detach(), index, targets)
        self._orders.record(batch_idx, index)

    def on_train_epoch_end(self, trainer, pl_module):
        self.tracker.end_epoch()
        sequential = isinstance(getattr(trainer.train_dataloader, "sampler", None), SequentialSampler)
        message = self._orders.end_epoch(trainer.current_epoch, sequential)
        if message is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def on_train_end(self, trainer, pl_module):
        self.scores = self.tracker.scores().cpu()  # collective under DDP: every rank is here

    def state_dict(self) -> dict:
        if self.tracker is None:  # nothing recorded yet (or restored but not started)
            p = self._pending
            return {
                "tracker": final_state(p) if p is not None and p["complete"] else p,
                "orders": self._orders.state_dict(),
            }
        # The whole dataset's state (collective when sharded: every rank is here), so any world
        # size can resume it.
        sd = self.tracker.full_state_dict()
        return {"tracker": final_state(sd) if sd["complete"] else sd, "orders": self._orders.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        sd = state_dict.get("tracker")
        self._orders.load_state_dict(state_dict.get("orders"))
        if sd is None:
            return
        sd = expand_final_state(sd)
        self._restored_rows = 0 if sd["complete"] else int(sd.get("rows_in_epoch", 0))
        if self.tracker is None:
            self._pending = sd
        else:
            self.tracker.load_full_state_dict(sd)
