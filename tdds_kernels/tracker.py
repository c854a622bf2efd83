"""TDDSTracker: the streaming TDDS state, its epochs, counters and checkpoints (DESIGN.md §2–4)."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from . import backends
from ._host_counters import HostSnapshots
from ._ops import COUNTERS, DUPLICATES, NONFINITE, NUM_SLOTS, OUT_OF_RANGE

FORMAT = "tdds_kernels.TDDSTracker"
FORMAT_VERSION = 1
STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)
ON_NONFINITE = ("error", "skip")


def _normalize_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


class TDDSTracker:
    """Online TDDS scores with O(N·C) state, fed one batch of training logits at a time.

    Per epoch: call ``update(logits, index)`` for every batch (index = dataset indices of the
    rows), then ``end_epoch()``. ``scores()`` gives the (N,) scores by dataset index; higher
    means keep. Duplicates, missing samples and non-finite rows follow DESIGN.md §3 and are
    counted in ``stats``.
    """

    def __new__(cls, *args, process_group=None, **kwargs):
        # A process group makes this a sharded tracker (tdds_kernels.distributed); same API.
        if process_group is not None and cls is TDDSTracker:
            try:
                from .distributed import ShardedTDDSTracker
            except ImportError as exc:
                raise NotImplementedError(f"process_group: sharded tracking is unavailable ({exc})")
            return super().__new__(ShardedTDDSTracker)
        return super().__new__(cls)

    def __init__(self, num_samples: int, num_classes: int, window: int = 10, decay: float = 0.9,
                 trajectory_len: int | None = 30, device="cpu", storage_dtype=torch.float32,
                 backend: str = "auto", on_nonfinite: str = "error", debug: bool = False,
                 process_group=None, baseline_options: dict | None = None):
        if process_group is not None and type(self) is TDDSTracker:
            raise NotImplementedError("process_group: sharded tracking is not implemented yet")
        _check_int("num_samples", num_samples, 1)
        _check_int("num_classes", num_classes, 1)
        _check_int("window", window, 2)
        if trajectory_len is not None:
            _check_int("trajectory_len", trajectory_len, 1)
            if trajectory_len < window:
                raise ValueError(f"trajectory_len: expected >= window ({window}), got {trajectory_len}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
            raise ValueError(f"decay: expected a float in (0, 1], got {decay!r}")
        if storage_dtype not in STORAGE_DTYPES:
            raise TypeError(f"storage_dtype: expected one of {STORAGE_DTYPES}, got {storage_dtype!r}")
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite: expected one of {ON_NONFINITE}, got {on_nonfinite!r}")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.window = window
        self.decay = float(decay)
        self.trajectory_len = trajectory_len
        self.storage_dtype = storage_dtype
        self.on_nonfinite = on_nonfinite
        self.debug = bool(debug)
        self.device = _normalize_device(device)
        self._backend = backends.resolve(backend, self.device)

        dev = self.device
        self._prev = torch.zeros(num_samples, num_classes, dtype=storage_dtype, device=dev)
        self._seen = torch.full((num_samples,), -1, dtype=torch.int32, device=dev)
        self._ring = torch.full((num_samples, window - 1), float("nan"), dtype=torch.float32, device=dev)
        self._score = torch.zeros(num_samples, dtype=torch.float32, device=dev)
        self._counters = torch.zeros(NUM_SLOTS, dtype=torch.int64, device=dev)  # ..., epoch
        self._epoch_start_counters = torch.zeros(NUM_SLOTS, dtype=torch.int64)  # host copy
        self._epoch = 0
        self._rows_in_epoch = 0
        self._next_dup_check = num_samples
        self._dup_check_mark = (0, 0)  # (rows, duplicates) of this epoch at the last check
        self._host_counters = HostSnapshots()  # counters copies for that check (no CUDA sync)
        self._complete = False
        # tdds_kernels.baselines.BaselineScores, made on the first update with targets; like the
        # TDDS state it records only the first trajectory_len epochs.
        self._baselines = None
        self.baseline_options = dict(baseline_options or {})
        if self.baseline_options:  # validate now rather than at the first update with targets
            from .baselines import BaselineScores
            BaselineScores(1, num_classes, "cpu", **self.baseline_options)

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def epoch(self) -> int:
        """The epoch being recorded (0-based): the number of end_epoch() calls so far."""
        return self._epoch

    @property
    def complete(self) -> bool:
        """True once epoch trajectory_len − 1 has ended; later updates are no-ops."""
        return self._complete

    @property
    def stats(self) -> dict[str, int]:
        """Cumulative counters (DESIGN.md §2) plus epochs and windows folded so far."""
        out = dict(zip(COUNTERS, self._counters.tolist()))  # zip stops before the epoch slot
        out["epochs"] = self._epoch
        out["windows"] = max(0, self._epoch - self.window + 1)
        return out

    def __repr__(self):
        return (f"TDDSTracker(num_samples={self.num_samples}, num_classes={self.num_classes}, "
                f"window={self.window}, decay={self.decay}, trajectory_len={self.trajectory_len}, "
                f"device='{self.device}', storage_dtype={self.storage_dtype}, "
                f"backend='{self.backend}', epoch={self._epoch}, complete={self._complete})")

    # ------------------------------------------------------------------ recording
    def _check_batch(self, logits, index):
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
        if not isinstance(index, torch.Tensor):
            raise TypeError(f"index: expected a torch.Tensor, got {type(index).__name__}")
        if logits.dim() != 2:
            raise ValueError(f"logits: expected shape (B, {self.num_classes}), got {tuple(logits.shape)}")
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits: expected {self.num_classes} classes (shape (B, {self.num_classes})),"
                             f" got {logits.shape[1]} (shape {tuple(logits.shape)})")
        if logits.dtype not in LOGIT_DTYPES:
            raise TypeError(f"logits: expected dtype float32, float16 or bfloat16, got {logits.dtype}")
        if index.dim() != 1 or index.shape[0] != logits.shape[0]:
            raise ValueError(f"index: expected shape ({logits.shape[0]},) to match logits' rows, "
                             f"got {tuple(index.shape)}")
        if index.dtype not in INDEX_DTYPES:
            raise TypeError(f"index: expected dtype int64 or int32, got {index.dtype}")
        for name, t in (("logits", logits), ("index", index)):
            if _normalize_device(t.device) != self.device:
                raise ValueError(f"{name}: expected a tensor on {self.device} (the tracker's device), "
                                 f"got one on {t.device}")

    def _check_range(self, index):
        bad = (index < 0) | (index >= self.num_samples)
        if bool(bad.any()):
            first = int(index[bad][0])
            raise ValueError(f"index: expected dataset indices in [0, {self.num_samples}), got "
                             f"{int(bad.sum())} outside it (first: {first})")

    def update(self, logits: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Record one batch of the current epoch: logits (B, C) and dataset indices (B,).

        With `targets` (B,) class labels, the baseline scores (baseline_scores()) are tracked too.
        """
        self._check_batch(logits, index)
        if self._complete or logits.shape[0] == 0:
            return
        compiling = torch.compiler.is_compiling()
        # On CPU the range check is free, so bad indices raise before anything changes; on CUDA
        # it would sync every step, so the kernels skip and count them and end_epoch raises.
        if not compiling and (self.device.type == "cpu" or self.debug):
            self._check_range(index)
        if targets is not None:
            if self._baselines is None:
                from .baselines import BaselineScores
                self._baselines = BaselineScores(self.num_samples, self.num_classes, self.device,
                                                 **self.baseline_options)
            # Before the TDDS op: it reads `seen` to apply the same first-occurrence rule.
            self._baselines.update(logits.detach(), index, targets, self._seen, self._epoch)
        self._backend.update(logits.detach().contiguous(), index.contiguous(), self._prev,
                             self._seen, self._ring, self._counters)
        if not compiling:  # host-side bookkeeping stays out of compiled graphs (no guards on it)
            self._rows_in_epoch += logits.shape[0]
            if self._rows_in_epoch >= self._next_dup_check:
                self._check_forgotten_end_epoch()

    def _check_forgotten_end_epoch(self):
        # Runs once per N rows of an epoch: if nearly every row since the last check was a
        # duplicate, the loop most likely forgot end_epoch(). Repeated augmentation spreads its
        # duplicates over the epoch and stays far below the threshold. No sync on CUDA: it reads
        # the newest counters copy that has landed (one check late), see _host_counters.
        self._next_dup_check += self.num_samples
        got = self._host_counters.take(self._counters, (self._epoch, self._rows_in_epoch))
        rows0, dups0 = self._dup_check_mark
        if got is None or got[0][0] != self._epoch or got[0][1] <= rows0:  # none, or stale
            return
        (_, rows), counters = got
        dups = int(counters[DUPLICATES]) - int(self._epoch_start_counters[DUPLICATES])
        self._dup_check_mark = (rows, dups)
        if dups - dups0 >= 0.9 * (rows - rows0):
            warnings.warn(f"TDDSTracker: {dups - dups0} of the last {rows - rows0} rows "
                          f"recorded in epoch {self._epoch} were duplicates of samples already "
                          "recorded in it; did you forget end_epoch()?", RuntimeWarning, stacklevel=3)

    def end_epoch(self) -> None:
        """Close the current epoch: mark missing samples and fold a completed window into S."""
        if self._complete:
            return
        counters = self._counters.to("cpu", copy=True)
        new = counters - self._epoch_start_counters
        if int(new[OUT_OF_RANGE]):
            raise ValueError(f"index: {int(new[OUT_OF_RANGE])} rows of epoch {self._epoch} had dataset "
                             f"indices outside [0, {self.num_samples}) and were skipped; the epoch is "
                             "not closed (use debug=True to raise at the offending update)")
        if int(new[NONFINITE]) and self.on_nonfinite == "error":
            raise ValueError(f"logits: {int(new[NONFINITE])} rows of epoch {self._epoch} had non-finite "
                             "values and were ignored; the epoch is not closed (set "
                             "tracker.on_nonfinite = 'skip' to accept that and call end_epoch() again)")
        if self._baselines is not None:
            self._baselines.end_epoch(self._seen, self._epoch)
        self._backend.epoch_step(self._seen, self._ring, self._score, self._counters, self.decay)
        self._epoch += 1
        self._epoch_start_counters = self._counters.to("cpu", copy=True)
        self._rows_in_epoch = 0
        self._next_dup_check = self.num_samples
        self._dup_check_mark = (0, 0)
        if self.trajectory_len is not None and self._epoch >= self.trajectory_len:
            self._complete = True

    def scores(self) -> torch.Tensor:
        """(N,) float32 scores by dataset index on the tracker's device (a copy)."""
        return self._score.clone()

    def baseline_scores(self) -> dict[str, torch.Tensor]:
        """The training-dynamics baselines tracked from `targets` (see tdds_kernels.baselines)."""
        if self._baselines is None:
            raise RuntimeError("baseline_scores: no targets were passed to update(), so no baselines were tracked")
        return self._baselines.scores()

    # ------------------------------------------------------------------ checkpoints
    def _config(self) -> dict:
        return {"num_samples": self.num_samples, "num_classes": self.num_classes,
                "window": self.window, "decay": self.decay, "trajectory_len": self.trajectory_len,
                "storage_dtype": str(self.storage_dtype).replace("torch.", "")}

    def state_dict(self) -> dict:
        """Everything needed to resume bit-identically; tensors are CPU copies."""
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "config": self._config(),
            "on_nonfinite": self.on_nonfinite, "epoch": self._epoch, "complete": self._complete,
            "rows_in_epoch": self._rows_in_epoch, "next_dup_check": self._next_dup_check,
            "dup_check_mark": list(self._dup_check_mark),
            "epoch_start_counters": self._epoch_start_counters.clone(),
            "prev": self._prev.cpu().clone(), "seen": self._seen.cpu().clone(),
            "ring": self._ring.cpu().clone(), "score": self._score.cpu().clone(),
            "counters": self._counters.cpu().clone(),
            "baselines": None if self._baselines is None else self._baselines.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a state_dict; raises (naming what mismatched) and changes nothing if it doesn't fit."""
        if isinstance(sd, dict) and sd.get("shard") is not None and type(self) is TDDSTracker:
            raise ValueError("state_dict: this is one shard of a sharded tracker; load it with "
                             "process_group=..., or merge the shards (tdds_kernels.distributed.merge_shards)")
        _check_header(sd, "state_dict")
        mine, theirs = self._config(), sd.get("config", {})
        diffs = [f"{k}: tracker has {mine[k]!r}, state dict has {theirs.get(k)!r}"
                 for k in mine if theirs.get(k) != mine[k]]
        if diffs:
            raise ValueError("state_dict: config mismatch: " + "; ".join(diffs))
        expected = {"prev": (self._prev.shape, self._prev.dtype), "seen": (self._seen.shape, self._seen.dtype),
                    "ring": (self._ring.shape, self._ring.dtype), "score": (self._score.shape, self._score.dtype),
                    "counters": (self._counters.shape, self._counters.dtype),
                    "epoch_start_counters": (self._counters.shape, self._counters.dtype)}
        for key, (shape, dtype) in expected.items():
            t = sd.get(key)
            if not isinstance(t, torch.Tensor) or t.shape != shape or t.dtype != dtype:
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"state_dict: {key}: expected shape {tuple(shape)} dtype {dtype}, got {got}")
        if sd.get("on_nonfinite") not in ON_NONFINITE:
            raise ValueError(f"state_dict: on_nonfinite: expected one of {ON_NONFINITE}, "
                             f"got {sd.get('on_nonfinite')!r}")
        baselines = None
        if sd.get("baselines") is not None:
            from .baselines import BaselineScores
            baselines = BaselineScores(self.num_samples, self.num_classes, self.device,
                                       **self.baseline_options)
            baselines.load_state_dict(sd["baselines"])  # validates before anything changes
        self._baselines = baselines
        for name in ("prev", "seen", "ring", "score", "counters"):
            getattr(self, "_" + name).copy_(sd[name])
        self._epoch_start_counters = sd["epoch_start_counters"].clone()
        self._epoch = int(sd["epoch"])
        self._complete = bool(sd["complete"])
        self._rows_in_epoch = int(sd["rows_in_epoch"])
        self._next_dup_check = int(sd["next_dup_check"])
        self._dup_check_mark = tuple(int(v) for v in sd["dup_check_mark"])
        self.on_nonfinite = sd["on_nonfinite"]

    def save(self, path) -> None:
        """Write a checkpoint atomically: a crash mid-save leaves any previous file intact."""
        save_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path, device=None, backend: str = "auto") -> "TDDSTracker":
        """A tracker restored from save(); `device` defaults to CPU."""
        sd = torch.load(path, map_location="cpu", weights_only=True)
        _check_header(sd, str(path))
        cfg = dict(sd["config"])
        dtype_name = cfg.pop("storage_dtype")
        dtype = getattr(torch, dtype_name, None)
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"{path}: storage_dtype: unsupported {dtype_name!r}")
        tracker = cls(**cfg, storage_dtype=dtype, device=device or "cpu", backend=backend,
                      on_nonfinite=sd.get("on_nonfinite", "error"))
        tracker.load_state_dict(sd)
        return tracker


def _check_header(sd, where: str) -> None:
    """Raise unless `sd` is a tracker state dict of this format version; `where` names it."""
    if not isinstance(sd, dict) or sd.get("format") != FORMAT:
        got = sd.get("format") if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{where}: not a {FORMAT} checkpoint (format {got!r})")
    if sd.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: expected format version {FORMAT_VERSION}, got {sd.get('version')!r}")


def save_atomic(obj, path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
