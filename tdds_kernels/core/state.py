"""TrackerState: every tensor and counter of one tracker, declared once (docs/design.md §2).

    prev     (N, C)   storage dtype  log(p + 1e-8) of the last recorded row (full rows), or
    prev_val (N, K)   storage dtype  with prev_topk = K (docs/design.md §2.1): the K largest logs,
    prev_idx (N, K)   int16 / int32  their class ids (the narrowest type that holds C),
    prev_rest (N,)    storage dtype  the residual log of the other C - K classes
    seen     (N,)     int32          last epoch the sample was recorded in, -1 never
    ring     (N, W-1) float32        d_j in slot j mod (W-1); NaN = undefined
    score    (N,)     float32        running EMA S
    counters (5,)     int64          ops.schema.COUNTERS (cumulative), then the epoch; on the device
    epoch_start_counters (5,) int64  counters when the open epoch began (host copy)

plus host bookkeeping: the epoch, whether the trajectory is complete, the rows of the open epoch,
and the forgotten-end_epoch() check's marks (next_dup_check, dup_check_mark: diagnostics, not
state; they are not saved and restart from the loaded epoch's counts). The per-sample tensors (first dimension N)
are the ones a sharded tracker splits by dataset index; PER_SAMPLE, SUMMED and RESET below say
how each entry of the state dict behaves under a change of layout (tdds_kernels.distributed.layout).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ..ops.schema import COUNTERS, DUPLICATES, NUM_SLOTS, topk_index_dtype
from . import huge_pages
from .config import TrackerConfig

_full = lambda c: c.prev_topk is None  # noqa: E731
# name -> (shape and dtype for a config, or None where the config has no such tensor; initial value)
TENSORS = {
    "prev": (lambda c: ((c.num_samples, c.num_classes), c.storage_dtype) if _full(c) else None, 0.0),
    "prev_val": (lambda c: None if _full(c) else ((c.num_samples, c.prev_topk), c.storage_dtype), 0.0),
    "prev_idx": (lambda c: None if _full(c) else ((c.num_samples, c.prev_topk), topk_index_dtype(c.num_classes)), 0),
    "prev_rest": (lambda c: None if _full(c) else ((c.num_samples,), c.storage_dtype), 0.0),
    "seen": (lambda c: ((c.num_samples,), torch.int32), -1),
    "ring": (lambda c: ((c.num_samples, c.window - 1), torch.float32), float("nan")),
    "score": (lambda c: ((c.num_samples,), torch.float32), 0.0),
    "counters": (lambda c: ((NUM_SLOTS,), torch.int64), 0),
    "epoch_start_counters": (lambda c: ((NUM_SLOTS,), torch.int64), 0),
}
# Rows by dataset index (a config has either prev or the three prev_* tensors: consumers skip
# the names a state dict does not hold).
PER_SAMPLE = ("prev", "prev_val", "prev_idx", "prev_rest", "seen", "ring", "score")
# The previous row as the update op takes it, in its schema's order.
PREVIOUS_ROW = ("prev", "prev_val", "prev_idx", "prev_rest")
# What a complete tracker no longer reads (its updates are no-ops): a final checkpoint may drop
# these per-sample tensors (prev: N x C) and keep score, counters (stats) and baselines.
RECORDING = ("prev", "prev_val", "prev_idx", "prev_rest", "ring", "seen")
# Under a change of layout: the first len(COUNTERS) slots of these add up over shards (the
# slots after them, the epoch, are the same everywhere); rows_in_epoch adds up too.
SUMMED_COUNTERS = ("counters", "epoch_start_counters")
NUM_SUMMED_SLOTS = len(COUNTERS)
SUMMED_SCALARS = ("rows_in_epoch",)
SCALARS = ("epoch", "complete", "rows_in_epoch")


def tensor_specs(config: TrackerConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of every tensor a state of `config` holds."""
    specs = {name: spec(config) for name, (spec, _) in TENSORS.items()}
    return {name: s for name, s in specs.items() if s is not None}


def initial_values(config: TrackerConfig) -> dict[str, torch.Tensor]:
    """A fresh state's tensors as broadcast CPU views (no N x C allocation): for refilling a
    state dict that dropped its recording state."""
    return {
        name: torch.tensor(TENSORS[name][1], dtype=dtype).expand(shape)
        for name, (shape, dtype) in tensor_specs(config).items()
    }


def _int(where: str, name: str, value, minimum: int) -> int:
    # numbers.Integral covers numpy integers; bool is an int subclass but never a count.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{where}: {name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def check_readable(where: str, name: str, t: torch.Tensor) -> None:
    """Raise unless `t`'s data can be copied out: a meta tensor holds none, and a fake or
    otherwise unreadable tensor fails on its first element here rather than half-way through
    a load (one element read: a sync on CUDA, once per entry at load time)."""
    if t.is_meta:
        raise ValueError(f"{where}: {name}: expected a tensor holding data, got one on the meta device")
    try:
        t.detach().reshape(-1)[:1].to("cpu")
    except Exception as exc:  # whatever the device or subclass raises
        raise ValueError(
            f"{where}: {name}: expected a tensor whose data can be copied, got one on {t.device} ({type(exc).__name__})"
        ) from None


def _bool(where: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: {name}: expected a bool, got {value!r}")
    return bool(value)


class TrackerState:
    """The state of one tracker on `device` (epoch_start_counters stays on the host)."""

    def __init__(self, config: TrackerConfig, device: torch.device):
        self.config = config
        self.names = tuple(tensor_specs(config))
        for name, (shape, dtype) in tensor_specs(config).items():
            dev = "cpu" if name == "epoch_start_counters" else device
            setattr(self, name, huge_pages.full(shape, TENSORS[name][1], dtype, dev))
        self.epoch = 0
        self.complete = False
        self.start_epoch_bookkeeping()

    def previous_row(self) -> tuple[torch.Tensor, ...]:
        """The previous-row tensors the update op takes: (prev,) or (prev_val, prev_idx, prev_rest)."""
        return tuple(getattr(self, name) for name in PREVIOUS_ROW if name in self.names)

    def start_epoch_bookkeeping(self, rows: int = 0, duplicates: int = 0) -> None:
        """Rows of the open epoch and the forgotten-end_epoch() check's marks: zero at an epoch's
        start; after a load, where the loaded epoch stands (`rows` recorded in it, `duplicates`
        among them), so the check looks at the rows recorded after the load."""
        n = self.config.num_samples
        self.rows_in_epoch = rows
        self.next_dup_check = (rows // n + 1) * n  # the check runs once per N rows of an epoch
        self.dup_check_mark = (rows, duplicates)  # (rows, duplicates) of this epoch at the last check
        self.labels_warned_epoch = -1  # the epoch the index-looks-like-labels hint last fired in

    # ------------------------------------------------------------------ state dict
    def to_dict(self) -> dict:
        """Tensors as CPU copies, scalars as Python values (the keys of a tracker's state dict)."""
        out = {name: getattr(self, name).cpu().clone() for name in self.names}
        out.update(epoch=self.epoch, complete=self.complete, rows_in_epoch=self.rows_in_epoch)
        return out

    @staticmethod
    def check_dict(config: TrackerConfig, sd: dict, where: str = "state_dict") -> dict:
        """Validate every state entry of `sd` against `config` without changing anything; returns
        the scalars normalized. Raises a one-line ValueError naming the entry.

        Checked: each tensor's shape, dtype and layout, and that its data can be copied (not on
        the meta device: all of them before any copy); each scalar's type and range; the invariants
        the kernels rely on (the epoch slot of both counter tensors equals `epoch`, counts are
        non-negative and never below the epoch's start, `seen` lies in [-1, epoch], `complete`
        agrees with epoch and trajectory_len), so a hand-edited or corrupt dict cannot make a
        kernel index out of bounds or resume into an impossible state."""
        if not isinstance(sd, dict):
            raise ValueError(f"{where}: expected a dict, got {type(sd).__name__}")
        for name, (shape, dtype) in tensor_specs(config).items():
            if name not in sd:
                raise ValueError(f"{where}: missing entry {name!r}")
            t = sd[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{where}: {name}: expected shape {shape} dtype {dtype}, got {got}")
            if t.layout != torch.strided or t.is_quantized:
                raise ValueError(f"{where}: {name}: expected a dense tensor, got layout {t.layout}")
            check_readable(where, name, t)
        ids = sd.get("prev_idx")
        if (
            config.prev_topk is not None
            and ids.numel()
            and not (0 <= int(ids.min()) and int(ids.max()) < config.num_classes)
        ):
            raise ValueError(f"{where}: prev_idx: expected class ids in [0, {config.num_classes})")
        for name in SCALARS:
            if name not in sd:
                raise ValueError(f"{where}: missing entry {name!r}")
        scalars = {
            "epoch": _int(where, "epoch", sd["epoch"], 0),
            "complete": _bool(where, "complete", sd["complete"]),
            "rows_in_epoch": _int(where, "rows_in_epoch", sd["rows_in_epoch"], 0),
        }
        epoch, t_len = scalars["epoch"], config.trajectory_len
        if t_len is not None and (epoch > t_len or scalars["complete"] != (epoch == t_len)):
            raise ValueError(
                f"{where}: epoch / complete: expected epoch <= trajectory_len ({t_len}) and "
                f"complete exactly when they are equal, got epoch {epoch}, complete {scalars['complete']}"
            )
        if t_len is None and scalars["complete"]:
            raise ValueError(f"{where}: complete: expected False (trajectory_len is None), got True")
        k = len(COUNTERS)
        counters, start = sd["counters"], sd["epoch_start_counters"]
        for name, t in (("counters", counters), ("epoch_start_counters", start)):
            if int(t[k]) != epoch or bool((t[:k] < 0).any()):
                raise ValueError(
                    f"{where}: {name}: expected non-negative counts and the epoch slot equal to "
                    f"epoch ({epoch}), got {t.tolist()}"
                )
        if bool((start[:k] > counters[:k]).any()):
            raise ValueError(
                f"{where}: epoch_start_counters: expected counts <= counters {counters.tolist()}, got {start.tolist()}"
            )
        seen = sd["seen"]
        if seen.numel() and (int(seen.min()) < -1 or int(seen.max()) > epoch):
            raise ValueError(
                f"{where}: seen: expected epochs in [-1, {epoch}], got [{int(seen.min())}, {int(seen.max())}]"
            )
        if config.prev_topk is not None:
            check_distinct_ids(where, sd["prev_idx"], seen)
        return scalars

    def load_dict(self, sd: dict, where: str = "state_dict") -> None:
        """Copy a state dict in: everything is checked first, so a bad one changes nothing.
        (No autograd: a source that requires grad must not make the state require it.)"""
        scalars = self.check_dict(self.config, sd, where)
        with torch.no_grad():
            for name in self.names:
                if name == "epoch_start_counters":  # kept on the host
                    setattr(self, name, sd[name].to("cpu", copy=True))
                else:
                    getattr(self, name).copy_(sd[name])
        self.epoch, self.complete = scalars["epoch"], scalars["complete"]
        duplicates = int(sd["counters"][DUPLICATES]) - int(sd["epoch_start_counters"][DUPLICATES])
        self.start_epoch_bookkeeping(scalars["rows_in_epoch"], duplicates)


def check_distinct_ids(where: str, ids: torch.Tensor, seen: torch.Tensor, rows: int = 1 << 16) -> None:
    """Each recorded sample's prev_idx holds K distinct classes (what the update writes; the
    kernels find the old kept set by them), checked in chunks of rows: a sorted copy of the whole
    (N, K) at ImageNet-21k shape would double the state's largest tensor."""
    for start in range(0, ids.shape[0] if ids.shape[1] > 1 else 0, rows):
        recorded = torch.nonzero(seen[start : start + rows] >= 0).flatten()
        chunk = ids[start : start + rows].index_select(0, recorded.to(ids.device))
        ordered = chunk.sort(dim=1).values
        repeated = torch.nonzero((ordered[:, 1:] == ordered[:, :-1]).any(dim=1)).flatten()
        if repeated.numel():
            n = start + int(recorded[int(repeated[0])])
            msg = f"expected {ids.shape[1]} distinct class ids per recorded sample, sample {n} repeats"
            raise ValueError(f"{where}: prev_idx: {msg}")
