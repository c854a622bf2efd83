"""TDDSTracker: the streaming TDDS state, its epochs, counters and checkpoints (docs/design.md §2–4)."""

from __future__ import annotations

import contextlib
import threading
import warnings

import torch

from ..ops import registry
from ..ops.schema import COUNTERS, EPOCH, OUT_OF_RANGE, ROW_STATS
from . import checkpoint, diagnostics
from .baselines import BaselineScores, check_targets
from .checkpoint import check_state_dict  # noqa: F401  (re-exported)
from .config import STORAGE_DTYPES, TrackerConfig, check_int, resolve_device  # noqa: F401  (re-exported)
from .host_counters import HostSnapshots
from .inputs import (  # noqa: F401  (re-exported)
    INDEX_DTYPES,
    LOGIT_DTYPES,
    ON_NONFINITE,
    ON_OUT_OF_RANGE,
    allocate,
    check_baseline_options,
    check_batch,
    check_in_range,
    check_on_nonfinite,
    check_on_out_of_range,
    check_options,
    warn_if_probabilities,
)
from .kept_mass import KeptMass
from .state import TrackerState


class TDDSTracker:
    """Online TDDS scores with O(N·C) state, fed one batch of training logits at a time.

    ``prev_topk=K`` keeps a compressed previous row (K logs and ids per sample instead of C;
    docs/design.md §2.1): approximate scores for very many classes; None (default) is exact.

    Per epoch: call ``update(logits, index)`` for every batch (index = dataset indices of the
    rows), then ``end_epoch()``. ``scores()`` gives the (N,) scores by dataset index; higher
    means keep. Duplicates, missing samples and non-finite rows follow docs/design.md §3 and are
    counted in ``stats``. One process's tracker: for state sharded over DDP ranks build a
    tdds_kernels.ShardedTDDSTracker, or call tdds_kernels.make_tracker, which picks either.
    Both implement tdds_kernels.core.protocol.Tracker (here rank 0 of a world of 1).
    """

    # The Tracker protocol's view of a process: one tracker, no process group.
    rank = 0
    world_size = 1
    process_group = None

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
        on_out_of_range: str = "error",
        prev_topk: int | None = None,
        *,
        process_group: None = None,
    ):
        if process_group is not None:  # the sharded route of earlier releases: one line, what to call
            raise TypeError(
                "process_group: TDDSTracker is the single-process tracker; for state sharded over "
                "the ranks call tdds_kernels.make_tracker(..., process_group=pg) (or ShardedTDDSTracker)"
            )
        self.config = TrackerConfig(num_samples, num_classes, window, decay, trajectory_len, storage_dtype, prev_topk)
        self.on_nonfinite = on_nonfinite
        self.on_out_of_range = on_out_of_range
        self.debug = bool(debug)
        self.device = resolve_device(device)
        self._backend = registry.resolve(backend, self.device, topk=self.config.prev_topk is not None)
        self._fold = registry.fold_op(self.device)  # the baselines' fold, resolved outside any compiled step
        self._state = allocate(lambda: TrackerState(self.config, self.device), self.config, self.device)
        # prev_topk: the mean kept mass per epoch, warned about below its threshold (kept_mass.py)
        self.kept_mass = None if self.config.prev_topk is None else KeptMass(self.config.prev_topk)
        self._host_counters = HostSnapshots()  # counters copies for the check below (no CUDA sync)
        # Detects two threads inside update/end_epoch at once (docs/design.md §3, threads): taken
        # without blocking, so a second caller raises instead of interleaving with the first.
        self._busy = threading.Lock()
        # tdds_kernels.core.baselines.BaselineScores, made on the first update with targets; like
        # the TDDS state it records only the first trajectory_len epochs.
        self._baselines = None
        self.baseline_options = check_baseline_options(baseline_options, num_classes)

    # ------------------------------------------------------------------ properties
    num_samples = property(lambda self: self.config.num_samples)
    num_classes = property(lambda self: self.config.num_classes)
    window = property(lambda self: self.config.window)
    decay = property(lambda self: self.config.decay)
    trajectory_len = property(lambda self: self.config.trajectory_len)
    storage_dtype = property(lambda self: self.config.storage_dtype)
    prev_topk = property(lambda self: self.config.prev_topk)

    @property
    def on_nonfinite(self) -> str:
        """Rows with non-finite logits: "error" (end_epoch raises) or "skip" (ignored, counted)."""
        return self._on_nonfinite

    @on_nonfinite.setter
    def on_nonfinite(self, value: str) -> None:
        self._on_nonfinite = check_on_nonfinite(value)

    @property
    def on_out_of_range(self) -> str:
        """Rows whose index (or label, with targets) was skipped as out of range (CUDA, or a
        compiled update: the check is deferred to end_epoch): "error" (end_epoch raises, the epoch
        stays open) or "skip" (end_epoch accepts the epoch; the rows stay counted, in
        stats["out_of_range"], or for labels in the baselines' "out_of_range_targets")."""
        return self._on_out_of_range

    @on_out_of_range.setter
    def on_out_of_range(self, value: str) -> None:
        self._on_out_of_range = check_on_out_of_range(value)

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
        if self.kept_mass is not None:  # prev_topk: the last closed epoch's mean kept mass (float)
            out["kept_mass"] = self.kept_mass.last
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
    def update(self, logits: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Record one batch of the current epoch: logits (B, C) and dataset indices (B,).

        With `targets` (B,) class labels, the baseline scores (baseline_scores()) are tracked too.
        """
        check_batch(logits, index, self.num_classes, self.device)
        st = self._state
        if st.complete or logits.shape[0] == 0:
            return
        compiling = torch.compiler.is_compiling()
        if compiling:  # a compiled graph holds no Python lock (and must not trace one)
            return self._update(logits, index, targets, compiling)
        with self._exclusive("update"):
            self._update(logits, index, targets, compiling)

    @contextlib.contextmanager
    def _exclusive(self, method: str):
        # update, end_epoch, state_dict and load_state_dict hold self._busy (taken without blocking).
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"{method}: another thread is inside update(), end_epoch(), state_dict() or load_state_dict() "
                f"of this tracker ({type(self).__name__} at {id(self):#x}); a tracker is not thread-safe: "
                "feed it from one thread, or give each thread its own tracker"
            )
        try:
            yield
        finally:
            self._busy.release()

    def _update(self, logits, index, targets, compiling: bool) -> None:
        # On CPU the range check is free, so bad indices raise before anything changes; on CUDA
        # it would sync every step, so the kernels skip and count them and end_epoch raises.
        if not compiling and (self.device.type == "cpu" or self.debug):
            check_in_range("index", index, self.num_samples, "dataset indices")
            if self._state.rows_in_epoch == 0:  # a sample of the epoch's first batch: no sync on CUDA
                warn_if_probabilities(logits)
        self._record(logits, index, targets, logits.shape[0])

    def record_routed(self, logits, index, targets, rows: int, out_of_range: torch.Tensor) -> None:
        """Record rows that a sharded tracker's exchange checked at their source and routed here.

        `index`: each row's (local) sample, or any value outside [0, num_samples) for a row to skip
        (another rank's, or one at fault); `targets`: valid labels (anything on skipped rows).
        `rows` advances rows_in_epoch; `out_of_range` (a device int64 scalar: no host sync) is how
        many skipped rows count in stats["out_of_range"] (the op counts every skipped row)."""
        compiling = torch.compiler.is_compiling()
        with contextlib.nullcontext() if compiling else self._exclusive("update"):
            self._record(logits, index, targets, rows)
            skipped = ((index < 0) | (index >= self.num_samples)).sum()
            self._state.counters[OUT_OF_RANGE] += out_of_range - skipped

    def _record(self, logits, index, targets, rows: int) -> None:
        # update() after its checks, and record_routed. `rows`: what rows_in_epoch advances by.
        st = self._state
        compiling = torch.compiler.is_compiling()
        logits, index = logits.detach().contiguous(), index.contiguous()
        if targets is None:
            self._backend.update(logits, index, *st.previous_row(), st.seen, st.ring, st.counters)
        else:
            check_targets(targets, logits)  # before anything changes: a rejected targets= creates nothing
            if targets.dtype not in (torch.int64, torch.int32):  # uint16/32/64 have no min/max on CPU
                targets = targets.to(torch.int64)
            if not compiling and (self.device.type == "cpu" or self.debug):  # as the index check
                check_in_range("targets", targets, self.num_classes, "class labels")
            baselines = self._baselines
            if baselines is None:
                baselines = BaselineScores(
                    self.num_samples, self.num_classes, self.device, fold=self._fold, **self.baseline_options
                )
            # The op computes the rows' baseline quantities in its pass over the logits, for
            # the rows it applies (NaN for the others); fold adds them up per sample.
            row_stats = torch.empty(logits.shape[0], len(ROW_STATS), device=logits.device)
            self._backend.update(
                logits, index, *st.previous_row(), st.seen, st.ring, st.counters, targets.contiguous(), row_stats
            )
            baselines.fold(row_stats, index, st.counters[EPOCH])
            baselines.count_out_of_range(targets)  # rows the op left out (compiled, CUDA): end_epoch reports them
            self._baselines = baselines
        if not compiling:  # host-side bookkeeping stays out of compiled graphs (no guards on it)
            st.rows_in_epoch += rows
            if st.rows_in_epoch >= st.next_dup_check:
                diagnostics.check_forgotten_end_epoch(st, self._host_counters)

    def end_epoch(self) -> None:
        """Close the current epoch: mark missing samples and fold a completed window into S."""
        if self._state.complete:
            return
        with self._exclusive("end_epoch"):
            self._end_epoch()

    def _end_epoch(self) -> None:
        st = self._state
        new = self.epoch_counts()
        if new["out_of_range"] and self.on_out_of_range == "error":
            raise ValueError(
                f"index: {new['out_of_range']} rows of epoch {st.epoch} had dataset "
                f"indices outside [0, {self.num_samples}) and were skipped; the epoch is "
                "not closed (set tracker.on_out_of_range = 'skip' to accept that and call "
                "end_epoch() again; debug=True raises at the offending update)"
            )
        if self._baselines is not None:
            self._baselines.check_out_of_range(st.epoch, self.on_out_of_range)
        if new["nonfinite"] and self.on_nonfinite == "error":
            raise ValueError(
                f"logits: {new['nonfinite']} rows of epoch {st.epoch} had non-finite "
                "values and were ignored; the epoch is not closed (set "
                "tracker.on_nonfinite = 'skip' to accept that and call end_epoch() again)"
            )
        diagnostics.warn_empty_or_labels(st, new)
        if self._baselines is not None:
            self._baselines.end_epoch(st.seen, st.epoch)
        if self.kept_mass is not None:
            self.kept_mass.end_epoch(st.previous_row()[0], st.seen, st.epoch)
        self._backend.epoch_step(st.seen, st.ring, st.score, st.counters, self.decay)
        st.epoch += 1
        st.epoch_start_counters = st.counters.to("cpu", copy=True)
        st.start_epoch_bookkeeping()
        if self.trajectory_len is not None and st.epoch >= self.trajectory_len:
            st.complete = True

    def scores(self) -> torch.Tensor:
        """(N,) float32 scores by dataset index on the tracker's device (a copy).

        Warns (RuntimeWarning) while no window has been folded: until `window` epochs have
        ended every score is 0 and ranking them means nothing."""
        if self.epoch < self.window:
            warnings.warn(
                f"TDDSTracker.scores: no window has been folded yet ({self.epoch} of the "
                f"{self.window} epochs a first window needs have ended; {self.window - self.epoch} "
                "more end_epoch() calls): every score is 0",
                RuntimeWarning,
                stacklevel=2,
            )
        elif self.trajectory_len is not None and not self._state.complete:
            warnings.warn(
                f"TDDSTracker.scores: the trajectory is not complete ({self.epoch} of {self.trajectory_len} "
                "epochs have ended): these are the scores so far, not the final ones",
                RuntimeWarning,
                stacklevel=2,
            )
        return self._state.score.clone()

    def baseline_scores(self) -> dict[str, torch.Tensor]:
        """The training-dynamics baselines tracked from `targets` (see tdds_kernels.core.baselines)."""
        if self._baselines is None or not self._baselines.recorded_anything():
            raise RuntimeError(
                "baseline_scores: no row was recorded with targets (pass targets= to update()), "
                "so there are no baselines"
            )
        return self._baselines.scores()

    def baseline_state_dict(self) -> dict | None:
        """The baselines' state dict (CPU copies), None if no targets were passed."""
        return None if self._baselines is None else self._baselines.state_dict()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume bit-identically; tensors are CPU copies. Raises while another
        thread is inside update() (it would capture a half-recorded batch)."""
        with self._exclusive("state_dict"):
            return {
                **checkpoint.header(),
                "config": self.config.to_dict(),
                "on_nonfinite": self.on_nonfinite,
                "on_out_of_range": self.on_out_of_range,
                **self._state.to_dict(),
                "baselines": None if self._baselines is None else self._baselines.state_dict(),
            }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a state_dict; raises (naming what mismatched) and changes nothing if it doesn't fit."""
        apply = self.prepare_load(sd)
        with self._exclusive("load_state_dict"):
            apply()

    def prepare_load(self, sd: dict, where: str = "state_dict"):
        """Validate `sd` completely (header, config, every tensor and scalar, the options, the
        baselines) and return a function that copies it in, which cannot fail half-way; raises a
        one-line ValueError naming the entry and changes nothing if `sd` does not fit. The sharded
        tracker validates on every rank, agrees, then applies."""
        on_nonfinite, on_out_of_range = check_state_dict(self.config, sd, where)
        baselines = None
        if sd["baselines"] is not None:
            baselines = BaselineScores(
                self.num_samples, self.num_classes, self.device, fold=self._fold, **self.baseline_options
            )
            baselines.load_state_dict(sd["baselines"])  # checked above: only allocates and copies

        def apply() -> None:
            self._state.load_dict(sd, where)  # checked above: cannot fail half-way
            self._baselines = baselines
            self._on_nonfinite, self._on_out_of_range = on_nonfinite, on_out_of_range
            self._host_counters.clear()  # a counters copy in flight describes the old state

        return apply

    # A single tracker's state already covers the whole dataset; these match the sharded
    # tracker's methods so callers need not ask which kind they hold.
    full_state_dict = state_dict
    load_full_state_dict = load_state_dict

    def save(self, path, final: bool = False) -> None:
        """Write a checkpoint atomically: a crash mid-save leaves any previous file intact.
        final=True (a complete tracker only): without the recording state, a few bytes per sample."""
        sd = self.state_dict()
        checkpoint.save_atomic(checkpoint.final_state(sd) if final else sd, path)

    @classmethod
    def load(cls, path, device=None, backend: str = "auto") -> TDDSTracker:
        """A tracker restored from save(); `device` defaults to CPU.

        The file is untrusted input: read with weights_only=True, its checksums verified, and
        its tensors checked against its own config before the state is allocated (a small
        crafted file cannot make this allocate a config's worth of memory)."""
        where = str(path)
        sd = checkpoint.read(path, where)
        config = TrackerConfig.from_dict(sd.get("config"), f"{where}: config")
        TrackerState.check_dict(config, sd, where)  # before anything N-sized is allocated
        tracker = cls(
            **config.to_dict() | {"storage_dtype": config.storage_dtype},
            device=device or "cpu",
            backend=backend,
        )
        tracker.prepare_load(sd, where)()
        return tracker
