"""Hugging Face ``Trainer`` integration: TDDS scores of the training set while a Trainer trains.

    from tdds_kernels.integrations.hf import TDDSCallback, TDDSTrainer, add_index

    train_set = add_index(train_set)                 # adds an "index" column / key
    cb = TDDSCallback(num_samples=len(train_set), num_classes=2, trajectory_len=30)
    trainer = TDDSTrainer(model=model, args=args, train_dataset=train_set, callbacks=[cb])
    trainer.train()                                  # or train(resume_from_checkpoint=True)
    cb.scores                                        # (N,) CPU, on every rank

Two pieces, because a callback alone never sees a batch:

- ``TDDSTrainerMixin`` (``TDDSTrainer`` = mixin + ``Trainer``; mix it into your own Trainer
  subclass the same way) keeps the ``index`` column through ``remove_unused_columns=True``, pops
  it from each batch before the model sees it, and hands the model's output of each *training*
  forward (``training_step``) with the indices to the callback. Evaluation and prediction batches
  only lose the column; ``compute_loss``, ``compute_metrics``, ``label_names`` and the data
  collators are untouched.
- ``TDDSCallback`` owns the tracker: it builds it when training starts (on ``args.device``;
  sharded over the ranks under torchrun), closes a tracker epoch at each training epoch's end,
  writes ``tdds.pt`` into every Trainer checkpoint folder, and restores it on resume.

Resume is exact from any checkpoint the Trainer resumes from. A step checkpoint written on an
epoch's last step is saved before that epoch ends: the callback closes such pending epochs when
training starts again. A checkpoint from the middle of an epoch holds that epoch open with the
rows of its first steps; the Trainer skips exactly those batches when it resumes (the same
order, from its seeded sampler), so the open epoch gets the rest. With ``ignore_data_skip=True``
the Trainer replays the epoch from its start instead, and the callback warns (see
``_check_resume``).
"""

from __future__ import annotations

import math
import os
import warnings

import torch
import torch.distributed as dist

from . import missing_extra

try:
    from transformers import Trainer, TrainerCallback
except ImportError:
    raise missing_extra(__name__, "transformers", "hf") from None

from ..core.checkpoint import expand_final_state, read
from ..core.protocol import Tracker
from ..core.tracker import TDDSTracker
from ..distributed.collectives import agree_group as agree
from ..distributed.factory import default_group
from ._final import final_path, rank_file, saved_world_size
from .loop import checkpoint_exists, load_tracker, make_tracker
from .pruning import check_options as pruning_options
from .pruning import make_sampler

CHECKPOINT_FILE = "tdds.pt"


def _tracker_device(device) -> torch.device:
    # torchrun, Accelerate and TrainingArguments hand out "cpu:0"; a CPU tensor reports plain
    # "cpu". One spelling for the tracker until the tracker itself treats them as one device.
    device = torch.device(device)
    return torch.device("cpu") if device.type == "cpu" else device


def default_logits(outputs):
    """The logits of a model output: ``outputs.logits`` (ModelOutput / dict), or the tensor itself."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:  # ModelOutput is a dict
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(
        f"TDDSCallback: cannot find logits in the model's output ({type(outputs).__name__}); "
        "pass logits_fn=... (output -> (B, C) tensor)"
    )


class TDDSCallback(TrainerCallback):
    """Records TDDS scores during ``Trainer.train`` (use with ``TDDSTrainerMixin``; module docstring).

    `index_key` names the batch entry with the dataset indices; `targets_key` (e.g. "labels")
    also tracks the baseline scores; `logits_fn` takes the model's output to (B, C) logits. Other
    keyword arguments go to TDDSTracker. After training, ``scores`` is the (N,) CPU tensor.

    `pruning` (PruningSampler's arguments, e.g. ``dict(prune_fraction=0.5,
    epoch_length="repeat")``) prunes inside this run: ``TDDSTrainer`` draws the training batches
    from ``callback.sampler``, every sample until the trajectory completes and the kept set after
    (docs/in_run.md). The Trainer counts epochs as steps divided by the first epoch's steps, so
    an epoch must keep its length: ``epoch_length`` "repeat" or "replacement" (required). Under
    several processes the sampler gives one global order and Accelerate splits its batches.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        index_key: str = "index",
        targets_key: str | None = None,
        logits_fn=None,
        checkpoint_file: str = CHECKPOINT_FILE,
        pruning: dict | None = None,
        **tracker_kwargs,
    ):
        if "device" in tracker_kwargs or "process_group" in tracker_kwargs:
            raise ValueError("device / process_group: set by the callback from the TrainingArguments")
        if pruning is not None:
            pruning = pruning_options(pruning)
            length = pruning.get("epoch_length", "pruned")
            if length not in ("repeat", "replacement"):
                raise ValueError(
                    "pruning: epoch_length: expected 'repeat' or 'replacement' with the Hugging Face Trainer "
                    f"(it counts epochs by steps, so an epoch must keep its length), got {length!r}"
                )
            for name in ("num_replicas", "rank"):
                if name in pruning:
                    raise ValueError(f"pruning: {name}: set by the Trainer (Accelerate splits the batches over ranks)")
        # Validate the arguments now rather than at train time, on a one-sample tracker (the real
        # one is N x C); the backend is checked when the tracker is built on the training device.
        for name, value in (("num_samples", num_samples), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        TDDSTracker(1, num_classes, **{k: v for k, v in tracker_kwargs.items() if k != "backend"})
        self.num_samples, self.num_classes = num_samples, num_classes
        self.index_key, self.targets_key = index_key, targets_key
        self.logits_fn = logits_fn or default_logits
        self.checkpoint_file = checkpoint_file
        self.tracker_kwargs = tracker_kwargs
        self.tracker: Tracker | None = None
        self.scores: torch.Tensor | None = None
        self.resume_dir: str | None = None  # set by TDDSTrainerMixin.train(resume_from_checkpoint=...)
        self._fed = False  # set by TDDSTrainerMixin.train: a Trainer that hands over the batches
        self._saved_step: int | None = None  # the global step whose checkpoint holds the tracker
        # One global order on every rank (Accelerate gives each rank its share of the batches).
        self.sampler = None if pruning is None else make_sampler(self, tracker_kwargs, pruning, num_replicas=1, rank=0)

    # ------------------------------------------------------------------ recording
    def record(self, outputs, index: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Feed one training micro-batch: the model's output and the batch's dataset indices."""
        if self.tracker is None:
            raise RuntimeError(
                "TDDSCallback: record() before training started (is the callback registered with the Trainer?)"
            )
        dev = self.tracker.device
        logits = self.logits_fn(outputs).detach()
        if logits.dim() != 2:
            raise ValueError(
                f"logits: expected shape (B, {self.num_classes}) from the model's output, got "
                f"{tuple(logits.shape)} (a sequence model needs logits_fn=... to pick one row "
                "per sample)"
            )
        index = torch.as_tensor(index).to(dev)
        if targets is not None:
            targets = torch.as_tensor(targets).to(dev)
        self.tracker.update(logits.to(dev), index, targets)

    # ------------------------------------------------------------------ trainer events
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if not self._fed:
            raise RuntimeError(
                "TDDSCallback: the Trainer does not feed it (a plain transformers.Trainer never hands the "
                "callback a batch); train with TDDSTrainer, or a Trainer subclass with TDDSTrainerMixin"
            )
        self.scores = None
        device, group = _tracker_device(args.device), default_group()
        self.tracker = None
        if state.global_step > 0:  # resumed: the tracker saved with that checkpoint
            folder = self.resume_dir or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            path = os.path.join(folder, self.checkpoint_file)
            final = final_path(path)
            if checkpoint_exists(final, device=device, process_group=group):
                # A complete tracker: scores, stats and config only; recording is over.
                self.tracker = make_tracker(
                    self.num_samples, self.num_classes, device=device, process_group=group, **self.tracker_kwargs
                )
                sd = exc = None
                try:  # checked: header, stored sizes, checksums; a bad file raises on every rank
                    sd = expand_final_state(read(rank_file(final, group)))
                except Exception as e:
                    exc = e
                if group is not None:
                    agree(group, exc, "TDDSCallback")  # raises on every rank if any failed
                elif exc is not None:
                    raise exc
                self.tracker.load_state_dict(sd)
                self.resume_dir = None
                return
            if not checkpoint_exists(path, device=device, process_group=group):
                saved = saved_world_size(path)
                here = 1 if group is None else dist.get_world_size(group)
                if saved is not None and saved != here:
                    raise FileNotFoundError(
                        f"TDDSCallback: resuming from step {state.global_step} on {here} process(es), but the "
                        f"tracker in {folder} was saved by {saved} processes, one file per rank "
                        f"({self.checkpoint_file}.rank{{r}}-of-{saved}): resume with {saved} processes, or merge "
                        f"the files once on one process: torch.save(tk.merge_shards({path!r}, {saved}), {path!r})"
                    )
                raise FileNotFoundError(
                    f"TDDSCallback: resuming from step {state.global_step}, but {path} (the tracker saved "
                    "with that checkpoint) is missing"
                    + (
                        f" for some of the {dist.get_world_size()} ranks "
                        "(a sharded run writes one file per rank, tdds.pt.rank{r}-of-{W}: resume with the "
                        "number of processes that saved)"
                        if group is not None
                        else ""
                    )
                    + "; without it the "
                    "scores would start mid-run. Resume from a checkpoint written with this callback, or "
                    "train from scratch"
                )
            self.tracker = load_tracker(
                path, device=device, process_group=group, backend=self.tracker_kwargs.get("backend", "auto")
            )
            self._check_config(path)
            self._check_resume(args, state, train_dataloader)
        else:
            self.tracker = make_tracker(
                self.num_samples, self.num_classes, device=device, process_group=group, **self.tracker_kwargs
            )
        self.resume_dir = None

    def _check_config(self, path):
        t, kw = self.tracker, self.tracker_kwargs
        want = {
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            **{k: kw[k] for k in ("window", "decay", "trajectory_len") if k in kw},
        }
        diffs = [
            f"{k}: callback has {v!r}, checkpoint has {getattr(t, k)!r}" for k, v in want.items() if getattr(t, k) != v
        ]
        if diffs:
            raise ValueError(f"{path}: tracker config mismatch: " + "; ".join(diffs))

    def _epochs_done(self, args, state, train_dataloader) -> int:
        # The Trainer's own count: global_step // optimizer steps per epoch.
        if train_dataloader is not None:
            try:
                per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
                return int(state.global_step // per_epoch)
            except TypeError:  # no len(): an iterable dataset
                pass
        return int(state.epoch or 0)

    def _check_resume(self, args, state, train_dataloader):
        done = self._epochs_done(args, state, train_dataloader)
        # A step checkpoint on an epoch's last step is written before on_epoch_end: that epoch
        # is complete in the tracker but still open. The Trainer resumes at the next epoch.
        while self.tracker.epoch < done and not self.tracker.complete:
            self.tracker.end_epoch()
        if self.tracker.complete or self.tracker.epoch != done:
            return
        rows = self.tracker.rows_in_epoch  # this rank's rows of the open epoch
        if rows and args.ignore_data_skip:
            warnings.warn(
                f"TDDSCallback: the checkpoint at step {state.global_step} holds epoch {done} open with "
                f"{rows} rows recorded, and ignore_data_skip=True makes the Trainer replay that epoch from "
                "its first batch: the replayed samples count as duplicates (their first, pre-checkpoint "
                "logits are kept) and the epoch's other samples are recorded from a model that trained "
                "those steps twice, so scores differ from an uninterrupted run. Resume with "
                "ignore_data_skip=False, or from a checkpoint at an epoch's end, for exact scores",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_epoch_end(self, args, state, control, **kwargs):
        # The Trainer calls this also when it stops inside an epoch (max_steps, early stopping,
        # should_training_stop); closing then would record a partial epoch, and a checkpoint saved
        # after it (save_strategy="epoch") would resume one epoch ahead. state.epoch is
        # epoch + steps done / steps per epoch: whole only when every step of the epoch ran. Left
        # open, the epoch resumes as from any mid-epoch checkpoint (the Trainer skips its steps).
        if state.epoch is not None and abs(state.epoch - round(state.epoch)) > 1e-6:
            return
        self.tracker.end_epoch()

    def on_save(self, args, state, control, **kwargs):
        # TDDSTrainerMixin has written it already, before the Trainer's own files (see there).
        if self._saved_step != state.global_step:
            self.save_checkpoint(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"), state.global_step)

    def save_checkpoint(self, folder: str, step: int) -> None:
        """Write the tracker into the Trainer's checkpoint `folder` (every rank: a sharded
        tracker writes one file per rank, collectively)."""
        self._saved_step = step
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, self.checkpoint_file)
        if not self.tracker.complete:
            self.tracker.save(path)
        else:  # scores and stats are final: the N x C recording state stays out
            self.tracker.save(final_path(path), final=True)

    def on_train_end(self, args, state, control, **kwargs):
        self.scores = self.tracker.scores().cpu()  # collective when sharded: every rank is here


class TDDSTrainerMixin:
    """Trainer side of the integration (module docstring): ``class MyTrainer(TDDSTrainerMixin, Trainer)``."""

    def _tdds_callback(self) -> TDDSCallback:
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, TDDSCallback):
                return cb
        raise ValueError("TDDSTrainer: no TDDSCallback among the callbacks; pass callbacks=[TDDSCallback(...)]")

    def _get_train_sampler(self, *args, **kwargs):
        sampler = self._tdds_callback().sampler
        return sampler if sampler is not None else super()._get_train_sampler(*args, **kwargs)

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        # The tracker goes into the folder first: the Trainer treats the folder as complete once
        # its own files are written and then deletes older checkpoints (save_total_limit), so a
        # crash between that and on_save would leave a checkpoint without the tracker and,
        # with the older ones gone, nothing to resume.
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        self._tdds_callback().save_checkpoint(folder, self.state.global_step)
        return super()._save_checkpoint(model, trial, *args, **kwargs)

    def _set_signature_columns_if_needed(self):
        # remove_unused_columns keeps only the model's forward arguments: add the index column,
        # which training_step / prediction_step take out again before the model is called.
        super()._set_signature_columns_if_needed()
        key = self._tdds_callback().index_key
        if key not in self._signature_columns:
            self._signature_columns.append(key)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        cb = self._tdds_callback()
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            from transformers.trainer_utils import get_last_checkpoint

            cb.resume_dir = get_last_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            cb.resume_dir = os.fspath(resume_from_checkpoint)
        cb._fed = True
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        cb = self._tdds_callback()
        if cb.index_key not in inputs:
            raise KeyError(
                f"TDDSTrainer: the training batch has no {cb.index_key!r} entry (keys: "
                f"{sorted(inputs)}); add it to the dataset with add_index(dataset) and keep it "
                "through a custom data collator"
            )
        index = inputs.pop(cb.index_key)
        targets = inputs.get(cb.targets_key) if cb.targets_key is not None else None
        captured = []

        def hook(module, inp, out):  # the first forward of this step is the batch's
            if not captured:
                captured.append(cb.logits_fn(out).detach())

        handle = model.register_forward_hook(hook)
        try:
            loss = super().training_step(model, inputs, *args, **kwargs)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("TDDSTrainer: training_step ran no forward pass of the model")
        cb.record(captured[0], index, targets)
        return loss

    def prediction_step(self, model, inputs, *args, **kwargs):
        inputs.pop(self._tdds_callback().index_key, None)  # evaluation is never recorded
        return super().prediction_step(model, inputs, *args, **kwargs)


class TDDSTrainer(TDDSTrainerMixin, Trainer):
    """``transformers.Trainer`` with TDDS recording (pass ``callbacks=[TDDSCallback(...)]``)."""


class _IndexedDicts(torch.utils.data.Dataset):
    def __init__(self, dataset, key):
        self.dataset, self.key = dataset, key

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if not isinstance(item, dict):
            raise TypeError(f"add_index: expected dataset items that are dicts, got {type(item).__name__}")
        return {**item, self.key: i}


def add_index(dataset, key: str = "index"):
    """The dataset with each item's position as `key`: a new column for a ``datasets.Dataset``,
    a wrapper adding ``item[key] = i`` for a map-style torch dataset of dicts."""
    if hasattr(dataset, "add_column") and hasattr(dataset, "column_names"):
        if key in dataset.column_names:
            raise ValueError(f"add_index: the dataset already has a {key!r} column")
        return dataset.add_column(key, list(range(len(dataset))))
    return _IndexedDicts(dataset, key)
