"""TrackerState: every tensor and counter of one tracker, declared once (docs/design.md §2).

    prev     (N, C)   storage dtype  log(p + 1e-8) of the last recorded row
    seen     (N,)     int32          last epoch the sample was recorded in, -1 never
    ring     (N, W-1) float32        d_j in slot j mod (W-1); NaN = undefined
    score    (N,)     float32        running EMA S
    counters (5,)     int64          ops.schema.COUNTERS (cumulative), then the epoch; on the device
    epoch_start_counters (5,) int64  counters when the open epoch began (host copy)

plus host bookkeeping: the epoch, whether the trajectory is complete, and the rows of the open
epoch that drive the forgotten-end_epoch() warning. The per-sample tensors (first dimension N)
are the ones a sharded tracker splits by dataset index; PER_SAMPLE, SUMMED and RESET below say
how each entry of the state dict behaves under a change of layout (tdds_kernels.distributed.layout).
"""

from __future__ import annotations

import torch

from ..ops.schema import COUNTERS, NUM_SLOTS
from .config import TrackerConfig

# name -> (shape and dtype for a config, initial value)
TENSORS = {
    "prev": (lambda c: ((c.num_samples, c.num_classes), c.storage_dtype), 0.0),
    "seen": (lambda c: ((c.num_samples,), torch.int32), -1),
    "ring": (lambda c: ((c.num_samples, c.window - 1), torch.float32), float("nan")),
    "score": (lambda c: ((c.num_samples,), torch.float32), 0.0),
    "counters": (lambda c: ((NUM_SLOTS,), torch.int64), 0),
    "epoch_start_counters": (lambda c: ((NUM_SLOTS,), torch.int64), 0),
}
PER_SAMPLE = ("prev", "seen", "ring", "score")  # rows by dataset index
# What a complete tracker no longer reads (its updates are no-ops): a final checkpoint may drop
# these per-sample tensors (prev: N x C) and keep score, counters (stats) and baselines.
RECORDING = ("prev", "ring", "seen")
# Under a change of layout: the first len(COUNTERS) slots of these add up over shards (the
# slots after them, the epoch, are the same everywhere); rows_in_epoch adds up too.
SUMMED_COUNTERS = ("counters", "epoch_start_counters")
NUM_SUMMED_SLOTS = len(COUNTERS)
SUMMED_SCALARS = ("rows_in_epoch",)
SCALARS = ("epoch", "complete", "rows_in_epoch", "next_dup_check", "dup_check_mark")


def tensor_specs(config: TrackerConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: spec(config) for name, (spec, _) in TENSORS.items()}


class TrackerState:
    """The state of one tracker on `device` (epoch_start_counters stays on the host)."""

    def __init__(self, config: TrackerConfig, device: torch.device):
        self.config = config
        for name, (spec, fill) in TENSORS.items():
            shape, dtype = spec(config)
            dev = "cpu" if name == "epoch_start_counters" else device
            setattr(self, name, torch.full(shape, fill, dtype=dtype, device=dev))
        self.epoch = 0
        self.complete = False
        self.start_epoch_bookkeeping()

    def start_epoch_bookkeeping(self) -> None:
        """Rows of the open epoch and the forgotten-end_epoch() check: zero at an epoch's start."""
        self.rows_in_epoch = 0
        self.next_dup_check = self.config.num_samples
        self.dup_check_mark = (0, 0)  # (rows, duplicates) of this epoch at the last check

    # ------------------------------------------------------------------ state dict
    def to_dict(self) -> dict:
        """Tensors as CPU copies, scalars as Python values (the keys of a tracker's state dict)."""
        out = {name: getattr(self, name).cpu().clone() for name in TENSORS}
        out.update(
            epoch=self.epoch,
            complete=self.complete,
            rows_in_epoch=self.rows_in_epoch,
            next_dup_check=self.next_dup_check,
            dup_check_mark=list(self.dup_check_mark),
        )
        return out

    @staticmethod
    def check_dict(config: TrackerConfig, sd: dict, where: str = "state_dict") -> dict:
        """Validate the state entries of `sd` against `config` without changing anything; returns
        the scalars normalized. Raises a one-line ValueError naming the entry."""
        for name, (shape, dtype) in tensor_specs(config).items():
            t = sd.get(name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{where}: {name}: expected shape {shape} dtype {dtype}, got {got}")
        try:
            scalars = {
                "epoch": int(sd["epoch"]),
                "complete": bool(sd["complete"]),
                "rows_in_epoch": int(sd["rows_in_epoch"]),
                "next_dup_check": int(sd["next_dup_check"]),
                "dup_check_mark": tuple(int(v) for v in sd["dup_check_mark"]),
            }
        except KeyError as exc:
            raise ValueError(f"{where}: missing entry {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: a scalar entry is not a number ({exc})") from None
        if scalars["epoch"] < 0 or len(scalars["dup_check_mark"]) != 2:
            raise ValueError(
                f"{where}: epoch / dup_check_mark: expected an epoch >= 0 and a pair, got "
                f"{scalars['epoch']!r}, {scalars['dup_check_mark']!r}"
            )
        return scalars

    def load_dict(self, sd: dict, where: str = "state_dict") -> None:
        """Copy a state dict in: everything is checked first, so a bad one changes nothing."""
        scalars = self.check_dict(self.config, sd, where)
        for name in TENSORS:
            target = getattr(self, name)
            if name == "epoch_start_counters":
                setattr(self, name, sd[name].clone())
            else:
                target.copy_(sd[name])
        for name, value in scalars.items():
            setattr(self, name, value)
