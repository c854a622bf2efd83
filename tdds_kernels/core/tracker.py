"""TDDSTracker: the streaming TDDS state, its epochs, counters and checkpoints (docs/design.md §2–4)."""

from __future__ import annotations

import warnings

import torch

from ..ops import registry
from ..ops.schema import COUNTERS, DUPLICATES
from . import checkpoint
from .config import STORAGE_DTYPES, TrackerConfig, check_int, resolve_device  # noqa: F401  (re-exported)
from .host_counters import HostSnapshots
from .state import TrackerState

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)
ON_NONFINITE = ("error", "skip")

# The sharded tracker's constructor, registered by tdds_kernels.distributed (which builds on this
# module; this module never imports it): TDDSTracker(..., process_group=pg) routes there.
_sharded_constructor = None


def register_sharded(constructor) -> None:
    global _sharded_constructor
    _sharded_constructor = constructor


class _Constructor(type):
    # TDDSTracker(..., process_group=pg) has always built a sharded tracker; the sharded tracker
    # is a separate class that holds a TDDSTracker, so the call is routed rather than inherited.
    def __call__(cls, *args, process_group=None, **kwargs):
        if process_group is None:
            return super().__call__(*args, **kwargs)
        if _sharded_constructor is None:
            raise NotImplementedError(
                "process_group: sharded tracking needs tdds_kernels.distributed, which failed to import"
            )
        return _sharded_constructor(*args, process_group=process_group, **kwargs)


def check_on_nonfinite(value) -> str:
    if value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite: expected one of {ON_NONFINITE}, got {value!r}")
    return value


def check_batch(logits, index, num_classes: int, device: torch.device) -> None:
    """Raise (one line naming the argument) unless logits (B, C) and index (B,) fit a tracker."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index: expected a torch.Tensor, got {type(index).__name__}")
    if logits.layout != torch.strided:
        raise TypeError(f"logits: expected a dense tensor, got layout {logits.layout}")
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape (B, {num_classes}), got {tuple(logits.shape)}")
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits: expected {num_classes} classes (shape (B, {num_classes})),"
            f" got {logits.shape[1]} (shape {tuple(logits.shape)})"
        )
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"logits: expected dtype float32, float16 or bfloat16, got {logits.dtype}")
    if index.dim() != 1 or index.shape[0] != logits.shape[0]:
        raise ValueError(f"index: expected shape ({logits.shape[0]},) to match logits' rows, got {tuple(index.shape)}")
    if index.dtype not in INDEX_DTYPES:
        raise TypeError(f"index: expected dtype int64 or int32, got {index.dtype}")
    for name, t in (("logits", logits), ("index", index)):
        if t.device.type != device.type or (t.device.index or 0) != (device.index or 0):
            raise ValueError(f"{name}: expected a tensor on {device} (the tracker's device), got one on {t.device}")


class TDDSTracker(metaclass=_Constructor):
    """Online TDDS scores with O(N·C) state, fed one batch of training logits at a time.

    Per epoch: call ``update(logits, index)`` for every batch (index = dataset indices of the
    rows), then ``end_epoch()``. ``scores()`` gives the (N,) scores by dataset index; higher
    means keep. Duplicates, missing samples and non-finite rows follow docs/design.md §3 and are
    counted in ``stats``. With ``process_group=pg`` the call builds a
    tdds_kernels.distributed.ShardedTDDSTracker instead (same API, state split over the ranks).
    """

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
        baseline_options: dict | None = None,
    ):
        self.config = TrackerConfig(num_samples, num_classes, window, decay, trajectory_len, storage_dtype)
        self.on_nonfinite = on_nonfinite
        self.debug = bool(debug)
        self.device = resolve_device(device)
        self._backend = registry.resolve(backend, self.device)
        self._state = TrackerState(self.config, self.device)
        self._host_counters = HostSnapshots()  # counters copies for the check below (no CUDA sync)
        # tdds_kernels.core.baselines.BaselineScores, made on the first update with targets; like
        # the TDDS state it records only the first trajectory_len epochs.
        self._baselines = None
        self.baseline_options = dict(baseline_options or {})
        if self.baseline_options:  # validate now rather than at the first update with targets
            from .baselines import BaselineScores

            BaselineScores(1, num_classes, "cpu", **self.baseline_options)

    # ------------------------------------------------------------------ properties
    num_samples = property(lambda self: self.config.num_samples)
    num_classes = property(lambda self: self.config.num_classes)
    window = property(lambda self: self.config.window)
    decay = property(lambda self: self.config.decay)
    trajectory_len = property(lambda self: self.config.trajectory_len)
    storage_dtype = property(lambda self: self.config.storage_dtype)

    @property
    def on_nonfinite(self) -> str:
        """Rows with non-finite logits: "error" (end_epoch raises) or "skip" (ignored, counted)."""
        return self._on_nonfinite

    @on_nonfinite.setter
    def on_nonfinite(self, value: str) -> None:
        self._on_nonfinite = check_on_nonfinite(value)

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def epoch(self) -> int:
        """The epoch being recorded (0-based): the number of end_epoch() calls so far."""
        return self._state.epoch

    @property
    def complete(self) -> bool:
        """True once epoch trajectory_len − 1 has ended; later updates are no-ops."""
        return self._state.complete

    @property
    def stats(self) -> dict[str, int]:
        """Cumulative counters (docs/design.md §2) plus epochs and windows folded so far."""
        out = dict(zip(COUNTERS, self._state.counters.tolist()))  # zip stops before the epoch slot
        out["epochs"] = self.epoch
        out["windows"] = max(0, self.epoch - self.window + 1)
        return out

    @property
    def rows_in_epoch(self) -> int:
        """Rows passed to update() in the open epoch (host count; rows of a skipped update too)."""
        return self._state.rows_in_epoch

    def epoch_counts(self) -> dict[str, int]:
        """The counters recorded in the open epoch so far (one host sync)."""
        new = self._state.counters.to("cpu", copy=True) - self._state.epoch_start_counters
        return dict(zip(COUNTERS, new.tolist()))

    def __repr__(self):
        return (
            f"TDDSTracker({self.config.describe()}, device='{self.device}', "
            f"backend='{self.backend}', epoch={self.epoch}, complete={self.complete})"
        )

    # ------------------------------------------------------------------ recording
    def _check_range(self, index):
        bad = (index < 0) | (index >= self.num_samples)
        if bool(bad.any()):
            first = int(index[bad][0])
            raise ValueError(
                f"index: expected dataset indices in [0, {self.num_samples}), got "
                f"{int(bad.sum())} outside it (first: {first})"
            )

    def update(self, logits: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Record one batch of the current epoch: logits (B, C) and dataset indices (B,).

        With `targets` (B,) class labels, the baseline scores (baseline_scores()) are tracked too.
        """
        check_batch(logits, index, self.num_classes, self.device)
        st = self._state
        if st.complete or logits.shape[0] == 0:
            return
        compiling = torch.compiler.is_compiling()
        # On CPU the range check is free, so bad indices raise before anything changes; on CUDA
        # it would sync every step, so the kernels skip and count them and end_epoch raises.
        if not compiling and (self.device.type == "cpu" or self.debug):
            self._check_range(index)
        self._record(logits, index, targets, logits.shape[0])

    def _record(self, logits, index, targets, rows: int) -> None:
        # update() after its checks. The sharded tracker's sync-free exchange calls it directly:
        # its rows are checked at the source, and rows it does not own carry an out-of-range
        # index on purpose (the op skips them). `rows`: what rows_in_epoch advances by.
        st = self._state
        compiling = torch.compiler.is_compiling()
        if targets is not None:
            if self._baselines is None:
                from .baselines import BaselineScores

                self._baselines = BaselineScores(
                    self.num_samples, self.num_classes, self.device, **self.baseline_options
                )
            # Before the TDDS op: it reads `seen` to apply the same first-occurrence rule.
            self._baselines.update(logits.detach(), index, targets, st.seen, st.epoch)
        self._backend.update(logits.detach().contiguous(), index.contiguous(), st.prev, st.seen, st.ring, st.counters)
        if not compiling:  # host-side bookkeeping stays out of compiled graphs (no guards on it)
            st.rows_in_epoch += rows
            if st.rows_in_epoch >= st.next_dup_check:
                self._check_forgotten_end_epoch()

    def _check_forgotten_end_epoch(self):
        # Runs once per N rows of an epoch: if nearly every row since the last check was a
        # duplicate, the loop most likely forgot end_epoch(). Repeated augmentation spreads its
        # duplicates over the epoch and stays far below the threshold. No sync on CUDA: it reads
        # the newest counters copy that has landed (one check late), see host_counters.
        st = self._state
        st.next_dup_check += self.num_samples
        got = self._host_counters.take(st.counters, (st.epoch, st.rows_in_epoch))
        rows0, dups0 = st.dup_check_mark
        if got is None or got[0][0] != st.epoch or got[0][1] <= rows0:  # none, or stale
            return
        (_, rows), counters = got
        dups = int(counters[DUPLICATES]) - int(st.epoch_start_counters[DUPLICATES])
        st.dup_check_mark = (rows, dups)
        if dups - dups0 >= 0.9 * (rows - rows0):
            warnings.warn(
                f"TDDSTracker: {dups - dups0} of the last {rows - rows0} rows "
                f"recorded in epoch {st.epoch} were duplicates of samples already "
                "recorded in it; did you forget end_epoch()?",
                RuntimeWarning,
                stacklevel=3,
            )

    def end_epoch(self) -> None:
        """Close the current epoch: mark missing samples and fold a completed window into S."""
        st = self._state
        if st.complete:
            return
        new = self.epoch_counts()
        if new["out_of_range"]:
            raise ValueError(
                f"index: {new['out_of_range']} rows of epoch {st.epoch} had dataset "
                f"indices outside [0, {self.num_samples}) and were skipped; the epoch is "
                "not closed (use debug=True to raise at the offending update)"
            )
        if new["nonfinite"] and self.on_nonfinite == "error":
            raise ValueError(
                f"logits: {new['nonfinite']} rows of epoch {st.epoch} had non-finite "
                "values and were ignored; the epoch is not closed (set "
                "tracker.on_nonfinite = 'skip' to accept that and call end_epoch() again)"
            )
        if self._baselines is not None:
            self._baselines.end_epoch(st.seen, st.epoch)
        self._backend.epoch_step(st.seen, st.ring, st.score, st.counters, self.decay)
        st.epoch += 1
        st.epoch_start_counters = st.counters.to("cpu", copy=True)
        st.start_epoch_bookkeeping()
        if self.trajectory_len is not None and st.epoch >= self.trajectory_len:
            st.complete = True

    def scores(self) -> torch.Tensor:
        """(N,) float32 scores by dataset index on the tracker's device (a copy)."""
        return self._state.score.clone()

    def baseline_scores(self) -> dict[str, torch.Tensor]:
        """The training-dynamics baselines tracked from `targets` (see tdds_kernels.core.baselines)."""
        if self._baselines is None:
            raise RuntimeError("baseline_scores: no targets were passed to update(), so no baselines were tracked")
        return self._baselines.scores()

    def baseline_state_dict(self) -> dict | None:
        """The baselines' state dict (CPU copies), None if no targets were passed."""
        return None if self._baselines is None else self._baselines.state_dict()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume bit-identically; tensors are CPU copies."""
        return {
            **checkpoint.header(),
            "config": self.config.to_dict(),
            "on_nonfinite": self.on_nonfinite,
            **self._state.to_dict(),
            "baselines": None if self._baselines is None else self._baselines.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a state_dict; raises (naming what mismatched) and changes nothing if it doesn't fit."""
        if isinstance(sd, dict) and sd.get("shard") is not None:
            raise ValueError(
                "state_dict: this is one shard of a sharded tracker; load it with "
                "process_group=..., or merge the shards (tdds_kernels.distributed.merge_shards)"
            )
        checkpoint.check_header(sd, "state_dict")
        diffs = self.config.mismatches(sd.get("config") or {})
        if diffs:
            raise ValueError("state_dict: config mismatch: " + "; ".join(diffs))
        TrackerState.check_dict(self.config, sd)
        on_nonfinite = sd.get("on_nonfinite")
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"state_dict: on_nonfinite: expected one of {ON_NONFINITE}, got {on_nonfinite!r}")
        baselines = None
        if sd.get("baselines") is not None:
            from .baselines import BaselineScores

            baselines = BaselineScores(self.num_samples, self.num_classes, self.device, **self.baseline_options)
            baselines.load_state_dict(sd["baselines"])  # validates before anything changes
        self._state.load_dict(sd)  # checked above: cannot fail half-way
        self._baselines = baselines
        self.on_nonfinite = on_nonfinite

    # A single tracker's state already covers the whole dataset; these match the sharded
    # tracker's methods so callers need not ask which kind they hold.
    full_state_dict = state_dict
    load_full_state_dict = load_state_dict

    def save(self, path) -> None:
        """Write a checkpoint atomically: a crash mid-save leaves any previous file intact."""
        checkpoint.save_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path, device=None, backend: str = "auto") -> TDDSTracker:
        """A tracker restored from save(); `device` defaults to CPU."""
        sd = checkpoint.read(path)
        config = TrackerConfig.from_dict(sd.get("config"), f"{path}: config")
        tracker = cls(
            **config.to_dict() | {"storage_dtype": config.storage_dtype},
            device=device or "cpu",
            backend=backend,
            on_nonfinite=sd.get("on_nonfinite", "error"),
        )
        tracker.load_state_dict(sd)
        return tracker
