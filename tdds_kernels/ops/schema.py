"""The tracker's two ops, declared once with torch.library.

Every backend implements the same two schemas (text below, written once). The dispatcher takes
one kernel per device key, so backends that share a device are sibling ops of one schema:

    tdds::update / tdds::epoch_step                  pure-PyTorch reference, any device
    tdds::update_triton / tdds::epoch_step_triton    Triton (CUDA; CPU under TRITON_INTERPRET=1)
    tdds::update_ext / tdds::epoch_step_ext          C++ extension: CPU kernel and CUDA kernel

State (docs/design.md §2), mutated in place:
    prev     (N, C)   storage dtype  log(p + 1e-8) of the last recorded row (cached log: d needs
                                     only the new p, its log and this; one log per element saved)
    seen     (N,)     int32          last epoch the sample was recorded in, -1 never
    ring     (N, W-1) float32        d_j in slot j mod (W-1); NaN = undefined
    score    (N,)     float32        running EMA S
    counters (5,)     int64          COUNTERS below, cumulative, then EPOCH
  optionally, with targets (B,) int class labels (the training-dynamics baselines, computed in
  the same pass over the logits; tdds_kernels.core.baselines folds them into its state):
    row_stats (B, 4)  float32        written for every row: ROW_STATS below for the row applied
                                     to its sample (same first-occurrence rule) whose target is
                                     in [0, C); NaN in all four for every other row
  or, with a compressed previous row (tdds::update_topk*, K <= C classes kept; design.md §2.1):
    prev_val  (N, K)  storage dtype  log(p + 1e-8) of the K largest p of the last recorded row
    prev_idx  (N, K)  int16 / int32  their class ids (topk_index_dtype(C)), same order
    prev_rest (N,)    storage dtype  log(mean p of the other C - K classes + 1e-8)
    The epoch being recorded lives on the device (counters[EPOCH]; epoch_step advances it), not
    in an int argument: a compiled or CUDA-graph-captured training step then stays valid across
    epochs instead of recompiling (or replaying a stale constant) each epoch, and no kernel
    needs a host sync to learn it.
"""

from __future__ import annotations

import torch

NAMESPACE = "tdds"

# Mutated arguments are marked (a!)...; both ops return nothing. targets and row_stats are given
# together or not at all.
TARGETS_ARGS = "Tensor? targets=None, Tensor(z!)? row_stats=None"
UPDATE_SCHEMA = (
    "(Tensor logits, Tensor index, Tensor(a!) prev, Tensor(b!) seen, Tensor(c!) ring, Tensor(d!) counters, "
    f"{TARGETS_ARGS}) -> ()"
)
# The compressed-row variant (docs/design.md §2.1): the previous row is the K largest
# log-probabilities (prev_val), their class ids (prev_idx) and one residual log (prev_rest);
# epoch_step does not read the previous row, so it is shared with the full-row ops.
UPDATE_TOPK_SCHEMA = (
    "(Tensor logits, Tensor index, Tensor(a!) prev_val, Tensor(b!) prev_idx, Tensor(c!) prev_rest, "
    f"Tensor(d!) seen, Tensor(e!) ring, Tensor(f!) counters, {TARGETS_ARGS}) -> ()"
)
EPOCH_STEP_SCHEMA = "(Tensor seen, Tensor(a!) ring, Tensor(b!) score, Tensor(c!) counters, float decay) -> ()"

# Slots of the counters tensor, shared by every backend (csrc/op_contract.h repeats these numbers).
COUNTERS = ("duplicates", "missing", "nonfinite", "out_of_range")
DUPLICATES, MISSING, NONFINITE, OUT_OF_RANGE = range(len(COUNTERS))
EPOCH = len(COUNTERS)  # counters[EPOCH]: the epoch being recorded (0-based)
NUM_SLOTS = EPOCH + 1

# Columns of row_stats, per row with target y and p = softmax(z) in float32 (the statement is
# ops/reference.py row_statistics):
#   correct      1.0 if argmax_c z_c == y (ties: the lowest class index) else 0.0
#   el2n         || p − onehot(y) ||_2
#   margin       z_y − max_{c≠y} z_c   (float32; −inf excluded classes: +inf when C = 1)
#   target_prob  p_y
ROW_STATS = ("correct", "el2n", "margin", "target_prob")
CORRECT, EL2N, MARGIN, TARGET_PROB = range(len(ROW_STATS))

# The baselines' per-sample state that tdds::fold_baselines* update from row_stats, one float64
# row per sample (plus a spare row N that absorbs rows without stats): these columns, then the
# Dyn-Unc ring of p_y over `window` epochs (tdds_kernels/core/baselines.py owns the layout).
BASELINE_COLUMNS = ("count", "forgetting", "last_correct", "learned", "el2n", "margin_sum")
RING_COL = len(BASELINE_COLUMNS)
# epoch: a 0-d int64 tensor on the state's device (counters[EPOCH]); el2n_epoch: -1 = the latest.
FOLD_SCHEMA = "(Tensor row_stats, Tensor index, Tensor(a!) packed, Tensor epoch, int el2n_epoch) -> ()"

EPS = 1e-8  # the release's epsilon inside log(p + eps)

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")


def _fake_noop(*args, **kwargs):
    # Both ops only mutate their (a!) arguments in place: the fake/meta kernel has nothing to do.
    return None


def _define(name: str, schema: str) -> str:
    """Declare tdds::{name} with `schema` and its no-op fake kernel; returns the qualified name."""
    _lib.define(name + schema)
    qualname = f"{NAMESPACE}::{name}"
    torch.library.register_fake(qualname, _fake_noop, lib=_lib)
    return qualname


def define_sibling(suffix: str) -> tuple[str, str]:
    """Declare tdds::update{suffix} and tdds::epoch_step{suffix} with the shared schemas.

    Returns the qualified names; the caller registers kernels for its devices.
    """
    return _define(f"update{suffix}", UPDATE_SCHEMA), _define(f"epoch_step{suffix}", EPOCH_STEP_SCHEMA)


def define_topk_sibling(suffix: str) -> str:
    """Declare tdds::update_topk{suffix} (UPDATE_TOPK_SCHEMA); returns the qualified name."""
    return _define(f"update_topk{suffix}", UPDATE_TOPK_SCHEMA)


def define_fold_sibling(suffix: str) -> str:
    """Declare tdds::fold_baselines{suffix} (FOLD_SCHEMA); returns the qualified name."""
    return _define(f"fold_baselines{suffix}", FOLD_SCHEMA)


def implement(name: str, kernel, keys=("CPU", "CUDA")) -> None:
    """Register `kernel` as tdds::{name}'s implementation for each dispatch key in `keys`: the one
    way a backend module registers a kernel (its schema declared by a define_* call first)."""
    for key in keys:
        _lib.impl(name, kernel, key)


def topk_index_dtype(num_classes: int) -> torch.dtype:
    """The narrowest integer type that holds every class id of `num_classes` classes."""
    return torch.int16 if num_classes <= 2**15 else torch.int32


def schema_of(op) -> str:
    """The argument/return part of an op's schema, for checking siblings against each other."""
    s = str(op._schema)
    return s[s.index("(") :]
