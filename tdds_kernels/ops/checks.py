"""The op contract's argument checks, for the Python backends (reference and Triton launchers).

csrc/op_contract.h states the same contract for the C++ kernels, and tests/ops/test_op_fuzz.py
holds every backend to it: each tensor has the shape, dtype and device its schema says
(ops/schema.py) and is contiguous, and on CPU counters[EPOCH] is in [0, 2^31 - 1). A violation
raises one ValueError line naming the op and the argument, before anything is read or written.

The checks read metadata only (plus the epoch of a CPU counters tensor, which costs no sync), so
they run inside CUDA-graph captures; under torch.compile the epoch is not read (no graph break).
Values the tracker owns (indices, labels, logits) are not errors here: the kernels skip and count
them.
"""

from __future__ import annotations

import torch

from .schema import EPOCH, NUM_SLOTS, RING_COL, ROW_STATS

FLOATS = (torch.float32, torch.float16, torch.bfloat16)  # logits and the stored previous row
INDICES = (torch.int64, torch.int32)  # index and targets
CLASS_IDS = (torch.int16, torch.int32)  # prev_idx (schema.topk_index_dtype)
_EPOCH_END = 2**31 - 1  # seen holds epochs as int32


def _names(dtypes) -> str:
    return "/".join(str(d).removeprefix("torch.") for d in dtypes)


def _tensor(op: str, name: str, t, dims: str, shape: tuple, dtypes) -> tuple[int, ...]:
    """t must be a contiguous tensor of `dtypes` whose sizes match `shape` (None: any size);
    returns its sizes."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    sizes = t.shape
    ok = len(sizes) == len(shape) and t.dtype in dtypes and t.is_contiguous()
    if ok:
        for size, want in zip(sizes, shape):
            ok = ok and (want is None or size == want)
    if not ok:
        layout = "" if t.is_contiguous() else " non-contiguous"
        raise ValueError(
            f"{op}: {name} must be a contiguous {dims} {_names(dtypes)} tensor, got{layout} "
            f"{list(t.shape)} {_names((t.dtype,))}"
        )
    return tuple(t.shape)


def _same_device(op: str, first: torch.Tensor, *others) -> None:
    for t in others:
        if t is not None and t.device != first.device:
            raise ValueError(f"{op}: all tensors must be on {first.device}, got one on {t.device}")


def _epoch(op: str, counters: torch.Tensor, name: str = "counters[EPOCH]") -> None:
    """The recorded epoch in [0, 2^31 - 1), read where it costs no host sync (CPU)."""
    if counters.device.type != "cpu" or torch.compiler.is_compiling():
        return
    values = counters.tolist()  # (the cheapest read of a small CPU tensor: ~1 us, int(t[i]) ~10)
    epoch = values[EPOCH] if counters.dim() else values
    if not 0 <= epoch < _EPOCH_END:
        raise ValueError(f"{op}: {name} must be in [0, 2^31 - 1), got {epoch}")


def _batch(op: str, logits, index) -> tuple[int, int]:
    """(B, C) of logits (at least one class: a row of none has no softmax) and its index."""
    batch, classes = _tensor(op, "logits", logits, "(B, C)", (None, None), FLOATS)
    if classes < 1:
        raise ValueError(f"{op}: logits must have at least one class (C >= 1), got {list(logits.shape)}")
    _tensor(op, "index", index, "(B,)", (batch,), INDICES)
    return batch, classes


def _state(op: str, n: int, seen, ring, counters) -> None:
    """seen (N,) int32, ring (N, W-1) float32 with W >= 2, counters (NUM_SLOTS,) int64."""
    _tensor(op, "seen", seen, "(N,)", (n,), (torch.int32,))
    _tensor(op, "ring", ring, "(N, W-1)", (n, None), (torch.float32,))
    if ring.shape[1] < 1:
        raise ValueError(f"{op}: ring must have W - 1 >= 1 columns, got {list(ring.shape)}")
    _tensor(op, "counters", counters, f"({NUM_SLOTS},)", (NUM_SLOTS,), (torch.int64,))


def _targets(op: str, batch: int, targets, row_stats) -> None:
    if (targets is None) != (row_stats is None):
        raise ValueError(f"{op}: targets and row_stats must be given together")
    if targets is not None:
        _tensor(op, "targets", targets, "(B,)", (batch,), INDICES)
        _tensor(op, "row_stats", row_stats, f"(B, {len(ROW_STATS)})", (batch, len(ROW_STATS)), (torch.float32,))


def update(op: str, logits, index, prev, seen, ring, counters, targets=None, row_stats=None) -> None:
    """UPDATE_SCHEMA's arguments (ops/schema.py)."""
    batch, classes = _batch(op, logits, index)
    n = _tensor(op, "prev", prev, "(N, C)", (None, classes), FLOATS)[0]
    _state(op, n, seen, ring, counters)
    _targets(op, batch, targets, row_stats)
    _same_device(op, logits, index, prev, seen, ring, counters, targets, row_stats)
    _epoch(op, counters)


def update_topk(
    op: str, logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters, targets=None, row_stats=None
) -> None:
    """UPDATE_TOPK_SCHEMA's arguments: update's, the full row replaced by K <= C kept classes."""
    batch, classes = _batch(op, logits, index)
    n, k = _tensor(op, "prev_val", prev_val, "(N, K)", (None, None), FLOATS)
    if not 1 <= k <= classes:
        raise ValueError(f"{op}: prev_val must keep 1 <= K <= C = {classes} classes, got {list(prev_val.shape)}")
    _tensor(op, "prev_idx", prev_idx, "(N, K)", (n, k), CLASS_IDS)
    if prev_idx.dtype != torch.int32 and classes > 2**15:
        raise ValueError(f"{op}: prev_idx must be int32 for more than 32768 classes, got {prev_idx.dtype}")
    _tensor(op, "prev_rest", prev_rest, "(N,)", (n,), (prev_val.dtype,))
    _state(op, n, seen, ring, counters)
    _targets(op, batch, targets, row_stats)
    _same_device(op, logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters, targets, row_stats)
    _epoch(op, counters)


def epoch_step(op: str, seen, ring, score, counters) -> None:
    """EPOCH_STEP_SCHEMA's tensors."""
    n = _tensor(op, "seen", seen, "(N,)", (None,), (torch.int32,))[0]
    _state(op, n, seen, ring, counters)
    _tensor(op, "score", score, "(N,)", (n,), (torch.float32,))
    _same_device(op, seen, ring, score, counters)
    _epoch(op, counters)


def fold(op: str, row_stats, index, packed, epoch) -> None:
    """FOLD_SCHEMA's tensors: packed holds N + 1 >= 1 rows of RING_COL + window >= 1 columns."""
    batch = _tensor(op, "row_stats", row_stats, f"(B, {len(ROW_STATS)})", (None, len(ROW_STATS)), (torch.float32,))[0]
    _tensor(op, "index", index, "(B,)", (batch,), INDICES)
    rows, width = _tensor(op, "packed", packed, f"(N + 1, {RING_COL} + window)", (None, None), (torch.float64,))
    if rows < 1 or width <= RING_COL:
        raise ValueError(f"{op}: packed must have N + 1 >= 1 rows and {RING_COL} + window >= {RING_COL + 1} columns")
    _tensor(op, "epoch", epoch, "0-d", (), (torch.int64,))
    _same_device(op, row_stats, index, packed, epoch)
    _epoch(op, epoch, "epoch")
