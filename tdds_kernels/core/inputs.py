"""What a tracker accepts from its caller: batches and the runtime options (docs/design.md §3).

Every check raises a one-line error naming the argument, expected vs got, before anything changes.
"""

from __future__ import annotations

import warnings

import torch

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)
ON_NONFINITE = ("error", "skip")
ON_OUT_OF_RANGE = ("error", "skip")


def check_on_nonfinite(value) -> str:
    if not isinstance(value, str) or value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite: expected one of {ON_NONFINITE}, got {value!r}")
    return value


def check_on_out_of_range(value) -> str:
    if not isinstance(value, str) or value not in ON_OUT_OF_RANGE:
        raise ValueError(f"on_out_of_range: expected one of {ON_OUT_OF_RANGE}, got {value!r}")
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


def check_options(sd: dict, where: str) -> tuple[str, str]:
    """(on_nonfinite, on_out_of_range) of a tracker state dict, validated."""
    if "on_nonfinite" not in sd:
        raise ValueError(f"{where}: missing entry 'on_nonfinite'")
    # on_out_of_range is absent from checkpoints written before the option existed: they could only error.
    values = sd["on_nonfinite"], sd.get("on_out_of_range", "error")
    for name, value, allowed in zip(("on_nonfinite", "on_out_of_range"), values, (ON_NONFINITE, ON_OUT_OF_RANGE)):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{where}: {name}: expected one of {allowed}, got {value!r}")
    return values


def check_in_range(name: str, values: torch.Tensor, upper: int, what: str) -> None:
    """Raise (naming `name`, with the count and the first offender) unless every value lies in
    [0, upper): one host sync, so callers check eagerly only where that is free (CPU) or asked
    for (debug=True)."""
    bad = (values < 0) | (values >= upper)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected {what} in [0, {upper}), got {int(bad.sum())} outside it (first: {int(values[bad][0])})"
        )


PROBABILITY_ROWS = 64  # rows looked at: enough to tell, cheap beside the update itself


def warn_if_probabilities(logits: torch.Tensor) -> None:
    """Warn when logits look like softmax outputs: every value of the first PROBABILITY_ROWS rows
    in [0, 1] and every row summing to 1 (within 1e-3). The tracker applies softmax itself, so
    probabilities would be squashed towards uniform and every score would mean little.
    Log-probabilities are fine (softmax recovers the probabilities). The tracker calls this on
    an epoch's first batch, where it reads the values anyway (CPU, or debug=True: no extra sync)."""
    rows = logits[:PROBABILITY_ROWS].float()
    if rows.shape[1] < 2 or not bool(((rows >= 0) & (rows <= 1)).all()):
        return
    if bool(((rows.sum(1) - 1).abs() <= 1e-3).all()):
        warnings.warn(
            "logits: the rows look like probabilities (every value in [0, 1], each row summing to 1); "
            "TDDSTracker applies softmax itself: pass the raw logits (or log-probabilities)",
            RuntimeWarning,
            stacklevel=4,
        )


def check_baseline_options(options, num_classes: int) -> dict:
    """`baseline_options` as a dict of BaselineScores' parameters, validated now rather than at
    the first update with targets; errors name the option as the caller wrote it."""
    from .baselines import OPTIONS, BaselineScores

    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"baseline_options: expected a dict such as {{'window': 5}}, got {type(options).__name__}")
    unknown = sorted(map(str, set(options) - set(OPTIONS)))
    if unknown:
        raise TypeError(f"baseline_options: unknown option {unknown[0]!r}; expected some of {OPTIONS}")
    try:
        BaselineScores(1, num_classes, "cpu", **options)
    except ValueError as exc:
        raise ValueError(f"baseline_options[{str(exc).split(':')[0]!r}]: {str(exc).split(':', 1)[1].strip()}") from None
    return dict(options)


def allocate(make, config, device):
    """make(), with an allocation failure reported in the caller's terms (the sizes it asked for)
    instead of the allocator's message."""
    try:
        return make()
    except (RuntimeError, MemoryError) as exc:
        text = str(exc).lower()
        if not isinstance(exc, MemoryError) and "alloc" not in text and "out of memory" not in text:
            raise
        rows = config.num_samples * config.num_classes * config.storage_dtype.itemsize
        size = f" ({rows / 2**30:.3g} GiB for the previous rows alone)" if config.prev_topk is None else ""
        raise MemoryError(
            f"num_samples={config.num_samples}, num_classes={config.num_classes}: the tracker state{size} "
            f"could not be allocated on {device}"
        ) from None
