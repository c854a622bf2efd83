"""TrackerConfig: what a tracker computes, declared and validated in one place.

Used by the tracker's constructor, its repr, its checkpoints (to_dict / from_dict) and load().
Runtime choices that do not change the scores (device, backend, on_nonfinite, debug) are not
part of it.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings

import torch

STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_int(name: str, value, minimum: int) -> int:
    """`value` as a Python int (numpy integers accepted), or a one-line error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_fraction(name: str, value) -> float:
    """`value` as a Python float in (0, 1] (numpy floats and ints accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name}: expected a float in (0, 1], got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
    """N samples of C classes; windows of `window` epochs over the first `trajectory_len` epochs
    (None: no end), folded into an EMA with weight `decay`; `prev` kept in `storage_dtype`.

    `prev_topk` = K keeps a compressed previous row (the K largest probabilities' logs and ids,
    one residual log; docs/design.md §2.1) instead of all C logs; None keeps full rows. K >= C is
    stored as None: the full row is then exact and no larger."""

    num_samples: int
    num_classes: int
    window: int = 10
    decay: float = 0.9
    trajectory_len: int | None = 30
    storage_dtype: torch.dtype = torch.float32
    prev_topk: int | None = None

    def __post_init__(self):
        # Normalized in place (frozen: through object.__setattr__) so equal configs compare equal
        # whatever numeric types they were given in.
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("num_samples", check_int("num_samples", self.num_samples, 1))
        set_("num_classes", check_int("num_classes", self.num_classes, 1))
        if self.num_classes == 1:  # allowed (the formula is defined), but nothing can be learnt from it
            warnings.warn(
                "num_classes=1: the softmax of one class is 1 whatever the logit, so every score will be 0",
                RuntimeWarning,
                stacklevel=4,
            )
        window = check_int("window", self.window, 2)
        if window == 2:
            raise ValueError(
                "window: expected an int >= 3, got 2 (a window of 2 epochs holds one "
                "transition, whose deviation from its own mean is always 0: every score "
                "would be 0)"
            )
        set_("window", window)
        if self.trajectory_len is not None:
            t = check_int("trajectory_len", self.trajectory_len, 1)
            if t < window:
                raise ValueError(f"trajectory_len: expected >= window ({window}), got {t}")
            set_("trajectory_len", t)
        set_("decay", check_fraction("decay", self.decay))
        if self.storage_dtype not in STORAGE_DTYPES:
            raise TypeError(f"storage_dtype: expected one of {STORAGE_DTYPES}, got {self.storage_dtype!r}")
        if self.prev_topk is not None:
            k = check_int("prev_topk", self.prev_topk, 1)
            set_("prev_topk", None if k >= self.num_classes else k)

    def replace(self, **changes) -> TrackerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The checkpoint form: plain values, the dtype by name ("float32")."""
        out = dataclasses.asdict(self)
        out["storage_dtype"] = str(self.storage_dtype).replace("torch.", "")
        if out["prev_topk"] is None:  # full rows: the same entries as before prev_topk existed
            del out["prev_topk"]
        return out

    @classmethod
    def from_dict(cls, d, where: str = "config") -> TrackerConfig:
        """Inverse of to_dict; a one-line ValueError naming `where` if `d` does not describe a config."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(n for n in ("num_samples", "num_classes") if n not in d)
        if unknown or missing:
            raise ValueError(f"{where}: expected the keys {sorted(names)}, got unknown {unknown}, missing {missing}")
        d = dict(d)
        if "storage_dtype" in d:
            name = d["storage_dtype"]
            dtype = getattr(torch, name, None) if isinstance(name, str) else None
            if dtype not in STORAGE_DTYPES:
                raise ValueError(f"{where}: storage_dtype: unsupported {name!r}")
            d["storage_dtype"] = dtype
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def mismatches(self, other: dict) -> list[str]:
        """How a checkpoint's config dict differs from this one, one entry per key."""
        mine = self.to_dict() | {"prev_topk": self.prev_topk}  # absent means None
        return [
            f"{k}: tracker has {mine[k]!r}, state dict has {other.get(k)!r}" for k in mine if other.get(k) != mine[k]
        ]

    def describe(self) -> str:
        """The fields as repr shows them: num_samples=..., ..., storage_dtype=torch.float32 (and
        prev_topk=K when the row is compressed)."""
        shown = [f.name for f in dataclasses.fields(self) if f.name != "prev_topk" or self.prev_topk is not None]
        return ", ".join(f"{name}={getattr(self, name)}" for name in shown)


def resolve_device(device) -> torch.device:
    """One torch.device per physical device whatever the spelling: "cpu" and "cpu:0" are the
    CPU; "cuda" is the current CUDA device, "cuda:0" the same when that is current. A device this
    process cannot use is a one-line ValueError naming `device`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device: expected a torch.device or a string like 'cpu' or 'cuda:0', got "
            f"{device!r} ({str(exc).splitlines()[0]})"
        ) from None
    if dev.type == "cpu":
        return torch.device("cpu")  # cpu:0 (torchrun, Accelerate, HF) is the same CPU
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device: expected a device this machine has, got {str(dev)!r} (torch.cuda.is_available() is False)"
            )
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if not 0 <= index < torch.cuda.device_count():
            raise ValueError(f"device: expected cuda:0..cuda:{torch.cuda.device_count() - 1}, got {str(dev)!r}")
        return torch.device("cuda", index)
    return dev
