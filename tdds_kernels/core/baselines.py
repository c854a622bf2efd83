"""Training-dynamics baseline scores, tracked in the same pass as TDDS (the reference for them).

Fed by ``TDDSTracker.update(logits, index, targets)``: the update op computes each applied row's
quantities in the same pass over the logits as TDDS (row_stats, ops/schema.py ROW_STATS; their
statement is ops/reference.py row_statistics) and fold() adds them to the per-sample state below
with fixed-shape tensor ops: no host sync, nothing for torch.compile to break on. Every quantity
is per sample n, over the epochs e in which n was recorded (the first usable row of n in epoch e,
docs/design.md §3, whose target is a class label), with p_e = softmax(z_e) in float32 and y the
target class:

    correct_e  = [argmax_c z_e,c == y]                      (ties: the lowest class index, as argmax)
    forgetting = #{ consecutive recorded epochs e < e' : correct_e and not correct_e' }
                 Toneva et al. 2019, "An Empirical Study of Example Forgetting": a forgetting event
                 is a correct -> incorrect transition between two successive presentations. A
                 sample never classified correctly in any recorded epoch ("never learned") ranks as
                 the most forgettable: it gets 1 + the largest count among learned samples (the
                 paper treats it as infinitely forgotten; a finite value keeps the ranking and
                 stays usable for min-max weights and score bins).
    el2n       = || p_e − onehot(y) ||_2 at e = el2n_epoch (Paul et al. 2021, "Deep Learning on a
                 Data Diet"; they average over a few runs early in training, here one run). With
                 el2n_epoch=None: the latest epoch in which n was recorded.
    aum        = mean_e ( z_e,y − max_{c≠y} z_e,c )          (Pleiss et al. 2020, area under the
                 margin; low = hard or mislabeled, so pruning keeps the LOW end, see KEEP_SIGN)
    dyn_unc    = mean_k std( p_j,y : j in window k )         (He et al. 2024, "Large-scale dataset
                 pruning with dynamic uncertainty"): windows of `window` consecutive epochs
                 k..k+window−1, k = 0..E−window; std is the population std over the epochs of the
                 window in which n was recorded, a window with fewer than 2 of them is left out;
                 0 if no window counts.

Samples never recorded get NaN in el2n / aum (nothing was measured) and are ranked as never
learned by forgetting. Each quantity is O(N) state (dyn_unc: O(N·window)), independent of epochs.
"""

from __future__ import annotations

import torch

from ..ops import registry
from ..ops.schema import BASELINE_COLUMNS, RING_COL
from . import host_counters
from .state import check_readable

NAMES = ("forgetting", "el2n", "aum", "dyn_unc")
OPTIONS = ("window", "el2n_epoch")  # BaselineScores' parameters a tracker's baseline_options may set
# Multiply a baseline by its sign to get "higher means keep" (the convention of TDDS and select()):
# all keep the hard / uncertain end, which for AUM is the low margins.
KEEP_SIGN = {"forgetting": 1.0, "el2n": 1.0, "aum": -1.0, "dyn_unc": 1.0}
FORMAT = "tdds_kernels.BaselineScores"
# The state, declared once: name -> (dtype, whether it has a second dimension of `window`
# epochs, initial value). Every tensor is per sample (first dimension N): a sharded tracker
# splits and interleaves all of them by dataset index.
TENSORS = {
    "last_correct": (torch.bool, 0, False),
    "learned": (torch.bool, 0, False),  # ever correct
    "forgetting": (torch.int32, 0, 0),
    "el2n": (torch.float32, 0, float("nan")),
    "margin_sum": (torch.float64, 0, 0.0),
    "count": (torch.int32, 0, 0),  # recorded epochs
    "prob_ring": (torch.float32, 1, float("nan")),
    "std_sum": (torch.float64, 0, 0.0),
    "windows": (torch.int32, 0, 0),
}
PER_SAMPLE = tuple(TENSORS)
FORMAT_VERSION = 1
# Rows whose target lay outside [0, C) where update() could not raise (a compiled step, CUDA): the
# op leaves them out of the baselines; counted on the device as [all epochs, at the open epoch's
# start], and the tracker's end_epoch reports the open epoch's (state_dict entry, optional).
OUT_OF_RANGE = "out_of_range_targets"
# Everything fold() changes per row, kept as the columns of one (N + 1, 6 + window) float64
# tensor (exact for these counts, flags and float32 values): one gather and one scatter of rows
# per batch. A dozen gathers and scatters of the separate tensors (each row a cache miss: the
# update streams the large TDDS state through the caches) cost as much as the kernel's own extra
# work (benchmarks/bench_targets.py measures the overhead). state_dict() and _state show the
# named tensors of TENSORS.
PACKED = (*BASELINE_COLUMNS, "prob_ring")  # prob_ring: columns RING_COL .. RING_COL + window - 1


def _cols(name: str):
    return slice(RING_COL, None) if name == "prob_ring" else PACKED.index(name)


def keep_scores(name: str, values: torch.Tensor) -> torch.Tensor:
    """A baseline as "higher means keep" scores (AUM is negated)."""
    if name not in KEEP_SIGN:
        raise ValueError(f"name: expected one of {NAMES}, got {name!r}")
    return values * KEEP_SIGN[name]


def check_targets(targets, logits) -> None:
    """Raise (naming `targets`, expected vs got) unless targets are integer labels, one per row."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets: expected a torch.Tensor, got {type(targets).__name__}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets: expected shape ({logits.shape[0]},) to match logits' rows, got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets: expected an integer dtype, got {targets.dtype}")
    if targets.device != logits.device:
        raise ValueError(f"targets: expected a tensor on {logits.device}, got one on {targets.device}")


class BaselineScores:
    """Streaming forgetting / EL2N / AUM / Dyn-Unc over the epochs a TDDSTracker records.

    `window` is Dyn-Unc's window (epochs); `el2n_epoch` the epoch whose EL2N is kept (None: the
    latest recorded). The tracker passes the update op's row_stats to fold() after each update
    with targets, and calls end_epoch() before its own epoch step; `fold` is the fold op
    (registry.fold_op(device) if None).
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        device="cpu",
        window: int = 5,
        el2n_epoch: int | None = None,
        fold=None,
    ):
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"window: expected an int >= 2, got {window!r}")
        if el2n_epoch is not None and (
            isinstance(el2n_epoch, bool) or not isinstance(el2n_epoch, int) or el2n_epoch < 0
        ):
            raise ValueError(f"el2n_epoch: expected None or an int >= 0, got {el2n_epoch!r}")
        self.num_samples, self.num_classes = num_samples, num_classes
        self.window, self.el2n_epoch = window, el2n_epoch
        self.device = torch.device(device)
        if host_counters.stream_capturing(self.device):
            # The fills below would be recorded into the graph and re-run on every replay,
            # resetting the baselines each step (the tracker creates this on its first update
            # with targets, so that update must not be the captured one).
            raise RuntimeError(
                "targets: the baselines' state would be created inside a CUDA graph capture, and "
                "every replay would reset it; call update(..., targets=...) once before capturing "
                "(the usual warm-up step does)"
            )
        self._padded = self._fresh(window)
        self._out_of_range = torch.zeros(2, dtype=torch.int64, device=self.device)
        # tdds::fold_baselines*: the C++ kernel on CPU, else the reference op (registry.fold_op;
        # a tracker passes the one it resolved, so nothing is looked up inside a compiled step)
        self._fold = registry.fold_op(self.device) if fold is None else fold

    def _fresh(self, window: int) -> dict[str, torch.Tensor]:
        # One spare row past N (row N): fold() sends the rows that record nothing there, so it
        # needs no data-dependent selection (a host sync, a graph break). Nothing reads it.
        rows = self.num_samples + 1
        padded = {"packed": torch.empty(rows, RING_COL + window, dtype=torch.float64, device=self.device)}
        for name, (dtype, _, fill) in TENSORS.items():
            if name in PACKED:
                padded["packed"][:, _cols(name)] = float(fill)
            else:
                padded[name] = torch.full((rows,), fill, dtype=dtype, device=self.device)
        return padded

    @property
    def _state(self) -> dict[str, torch.Tensor]:
        """The named tensors of TENSORS, N rows each: converted copies of the packed columns,
        views of the others."""
        p, n = self._padded, self.num_samples
        return {
            name: p["packed"][:n, _cols(name)].to(dtype) if name in PACKED else p[name][:n]
            for name, (dtype, _, _) in TENSORS.items()
        }

    def fold(self, row_stats: torch.Tensor, index: torch.Tensor, epoch) -> None:
        """Add one batch's row_stats (written by the update op with targets) to the samples of
        their rows; rows with NaN stats (not applied, or no usable target) change nothing.
        `epoch`: the epoch being recorded, an int or a 0-d tensor (the tracker passes its
        device-side counter, so a compiled step stays valid across epochs). No host sync."""
        epoch = torch.as_tensor(epoch, dtype=torch.int64, device=self.device)
        el2n_epoch = -1 if self.el2n_epoch is None else self.el2n_epoch
        self._fold(row_stats, index, self._padded["packed"], epoch, el2n_epoch)

    def count_out_of_range(self, targets: torch.Tensor) -> None:
        """Count the rows of a batch whose target lies outside [0, C) (no host sync)."""
        self._out_of_range[0] += ((targets < 0) | (targets >= self.num_classes)).sum()

    def check_out_of_range(self, epoch: int, on_out_of_range: str) -> None:
        """The tracker's end_epoch check (one host sync): with on_out_of_range "error", raise if
        rows of the open epoch were counted by count_out_of_range; the epoch stays open."""
        total, at_start = self._out_of_range.tolist()
        if total > at_start and on_out_of_range == "error":
            raise ValueError(
                f"targets: {total - at_start} rows of epoch {epoch} had class labels outside "
                f"[0, {self.num_classes}) and were left out of the baselines; the epoch is not "
                "closed (set tracker.on_out_of_range = 'skip' to accept that and call end_epoch() "
                "again; debug=True raises at the offending update)"
            )

    def end_epoch(self, seen, epoch: int) -> None:
        """Mark samples missing from `epoch`, then fold Dyn-Unc's window ending at `epoch`."""
        self._out_of_range[1] = self._out_of_range[0]
        p, n = self._padded, self.num_samples
        ring = p["packed"][:n, RING_COL:]  # a view: the mark below lands in the state
        ring[:, epoch % self.window].masked_fill_(seen != epoch, float("nan"))
        if epoch >= self.window - 1:
            defined = ~torch.isnan(ring)
            k = defined.sum(dim=1)
            vals = torch.where(defined, ring, torch.zeros_like(ring))
            mean = vals.sum(dim=1) / k.clamp(min=1)
            var = torch.where(defined, ring - mean[:, None], torch.zeros_like(ring)).square().sum(dim=1)
            std = (var / k.clamp(min=1)).sqrt()
            ok = k >= 2
            p["std_sum"][:n] += torch.where(ok, std, torch.zeros_like(std))
            p["windows"][:n] += ok.to(torch.int32)

    def scores(self) -> dict[str, torch.Tensor]:
        """{name: (N,) float32 by dataset index} for NAMES (raw values; see KEEP_SIGN)."""
        return scores_of(self._state)

    # ------------------------------------------------------------------ checkpoints
    def _config(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "window": self.window,
            "el2n_epoch": self.el2n_epoch,
        }

    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self._config(),
            **{k: v.cpu().clone() for k, v in self._state.items()},
            OUT_OF_RANGE: self._out_of_range.cpu().clone(),
        }

    def check_state_dict(self, sd: dict) -> tuple:
        """Validate a state_dict() against this object's sizes without changing or allocating
        anything; returns (window, el2n_epoch) from it. One-line ValueError naming the entry."""
        if not isinstance(sd, dict) or sd.get("format") != FORMAT or sd.get("version") != FORMAT_VERSION:
            got = (sd.get("format"), sd.get("version")) if isinstance(sd, dict) else type(sd).__name__
            raise ValueError(f"baselines state_dict: expected {FORMAT} version {FORMAT_VERSION}, got {got!r}")
        cfg = sd.get("config")
        if not isinstance(cfg, dict):
            raise ValueError(f"baselines state_dict: config: expected a dict, got {type(cfg).__name__}")
        for key in ("num_samples", "num_classes"):
            if cfg.get(key) != getattr(self, key):
                raise ValueError(f"baselines state_dict: {key}: expected {getattr(self, key)!r}, got {cfg.get(key)!r}")
        try:  # validates the options; allocates nothing
            other = BaselineScores(self.num_samples, self.num_classes, "meta", cfg.get("window"), cfg.get("el2n_epoch"))
        except ValueError as exc:
            raise ValueError(f"baselines state_dict: config: {exc}") from None
        for key, ref in other._state.items():
            t = sd.get(key)
            if not isinstance(t, torch.Tensor) or t.shape != ref.shape or t.dtype != ref.dtype:
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"baselines state_dict: {key}: expected shape {tuple(ref.shape)} dtype {ref.dtype}, got {got}"
                )
            check_readable("baselines state_dict", key, t)
        counts = sd.get(OUT_OF_RANGE)  # absent from files written before it was counted
        if counts is not None:
            if not isinstance(counts, torch.Tensor) or counts.shape != (2,) or counts.dtype != torch.int64:
                got = (tuple(counts.shape), counts.dtype) if isinstance(counts, torch.Tensor) else type(counts).__name__
                raise ValueError(
                    f"baselines state_dict: {OUT_OF_RANGE}: expected shape (2,) dtype torch.int64, got {got}"
                )
            check_readable("baselines state_dict", OUT_OF_RANGE, counts)
            if not 0 <= int(counts[1]) <= int(counts[0]):
                raise ValueError(
                    f"baselines state_dict: {OUT_OF_RANGE}: expected [total, at epoch start] with "
                    f"0 <= at epoch start <= total, got {counts.tolist()}"
                )
        return other.window, other.el2n_epoch

    def load_state_dict(self, sd: dict) -> None:
        """Restore from state_dict(); raises naming the mismatch and changes nothing if it doesn't fit.

        The window and el2n_epoch come from the state dict (the tracker builds this object with the
        defaults before loading); sizes must match.
        """
        window, el2n_epoch = self.check_state_dict(sd)
        padded = self._fresh(window)
        counts = torch.zeros(2, dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for k in TENSORS:
                if k in PACKED:
                    padded["packed"][: self.num_samples, _cols(k)].copy_(sd[k])
                else:
                    padded[k][: self.num_samples].copy_(sd[k])
            if sd.get(OUT_OF_RANGE) is not None:
                counts.copy_(sd[OUT_OF_RANGE])
        self.window, self.el2n_epoch = window, el2n_epoch
        self._padded, self._out_of_range = padded, counts

    def recorded_anything(self) -> bool:
        """Whether any row has been recorded (one host sync)."""
        return bool(self._padded["packed"][: self.num_samples, _cols("count")].any())


def scores_of(s: dict) -> dict[str, torch.Tensor]:
    """The baselines from a state (BaselineScores' tensors by name, any device): {name: (N,) float32}."""
    forgetting = s["forgetting"].to(torch.float32)
    top = forgetting[s["learned"]].max() if bool(s["learned"].any()) else forgetting.new_zeros(())
    forgetting = torch.where(s["learned"], forgetting, top + 1.0)
    count = s["count"]
    nan = torch.full_like(forgetting, float("nan"))
    aum = torch.where(count > 0, (s["margin_sum"] / count.clamp(min=1)).to(torch.float32), nan)
    dyn = (s["std_sum"] / s["windows"].clamp(min=1)).to(torch.float32)
    return {"forgetting": forgetting, "el2n": s["el2n"].clone(), "aum": aum, "dyn_unc": dyn}
