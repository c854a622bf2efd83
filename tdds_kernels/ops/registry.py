"""Which op pair a tracker calls: resolved once, by name and device; the tracker never branches.

The backends are declared in one table (BACKENDS below: name, device types, ops, the module that
registers them, a further condition); availability, "auto" and the tests' backend x device
matrix (tests/support/helpers.py backend_cases) are all read from it:

    reference  tdds::update / tdds::epoch_step            always available, any device
    triton     tdds::update_triton / ..._triton           CUDA; CPU only under TRITON_INTERPRET=1
    cpu        tdds::update_ext / ..._ext (CPU kernel)    C++ extension, CPU trackers
    cuda       tdds::update_ext / ..._ext (CUDA kernel)   C++ extension built with CUDA

A backend is available for an op on a device when the table lists both, its module imports and
the dispatcher holds a kernel of tdds::{op}{suffix} for the device (an extension built without
CUDA kernels has none). The baselines' fold (tdds::fold_baselines*, fold_op) is the first backend
in the device's "auto" order that has one: the C++ CPU kernel where the extension has it, the
reference op everywhere else, whatever the tracker's backend.

With topk=True (a tracker's prev_topk=K) the update op is the backend's tdds::update_topk{suffix}
sibling; a backend without one is unavailable for such trackers (reference: tdds::update_topk).

On CUDA, "auto" takes triton, then cuda, then reference, and never the Triton interpreter
(TRITON_INTERPRET=1 is a CPU test tool; by name, backend="triton" still accepts it).

Host syncs on CUDA (tests/ops/test_cuda_runtime.py checks each under sync debug mode "error"):
    never     triton and cuda: update and epoch_step, and TDDSTracker.update with them, including
              its once-per-N-rows forgotten-end_epoch check (tdds_kernels/core/host_counters.py);
              so they can be captured in a CUDA graph and run under torch.compile without breaks
    per call  reference update (nonzero and boolean indexing: data-dependent shapes); its
              epoch_step does not sync
              with targets= too (the op writes the baselines' row stats, a fixed-shape fold adds
              them up per sample)
    per call  update with debug=True (index range check)
    per epoch TDDSTracker.end_epoch (reads the counters to raise on skipped rows)
    on demand stats, scores() copied to the host, state_dict / save; the sharded tracker's update
              (a control collective every step)
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import reference, reference_fold, reference_topk  # noqa: F401  (define the reference ops)

OPS = ("update", "update_topk", "epoch_step", "fold_baselines")  # tdds::{op}{suffix}, ops/schema.py


def _triton_needs(device: torch.device) -> str | None:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the triton backend runs on CPU tensors only with TRITON_INTERPRET=1"
    return None


@dataclass(frozen=True)
class Spec:
    """One backend as declared: the device types it runs on, its ops (tdds::{op}{suffix}), the
    module that registers them (imported on first use; None: loaded with this package), a further
    condition (None if it runs, else why not), and where "auto" tries it: on the device types in
    `auto`, fastest (lowest `rank`) first (benchmarks/results/ has the measurements)."""

    name: str
    devices: tuple[str, ...]
    suffix: str
    ops: tuple[str, ...]
    module: str | None = None
    needs: Callable[[torch.device], str | None] | None = None
    auto: tuple[str, ...] = ()
    rank: int = 0


# The backends, in the order available() lists them; tests/support/helpers.py reads this table too.
# Auto never tries triton on CPU tensors (the interpreter is a test tool, asked for by name).
BACKENDS = (
    Spec("reference", ("cpu", "cuda"), "", OPS, auto=("cpu", "cuda"), rank=2),
    Spec(
        "triton",
        ("cpu", "cuda"),
        "_triton",
        ("update", "update_topk", "epoch_step"),
        ".triton",
        _triton_needs,
        auto=("cuda",),
        rank=0,
    ),
    Spec("cpu", ("cpu",), "_ext", OPS, ".extension", auto=("cpu",), rank=0),
    Spec("cuda", ("cuda",), "_ext", ("update", "epoch_step"), ".extension", auto=("cuda",), rank=1),
)
SPECS = {s.name: s for s in BACKENDS}
NAMES = tuple(SPECS)
# The order "auto" tries per device type (read from the table); the baselines' fold takes the
# first of these that has one (fold_op).
AUTO_ORDER = {
    kind: tuple(s.name for s in sorted((s for s in BACKENDS if kind in s.auto), key=lambda s: s.rank))
    for kind in ("cpu", "cuda")
}


@dataclass(frozen=True)
class Backend:
    name: str
    update: object  # torch._ops.OpOverloadPacket with the UPDATE_SCHEMA (UPDATE_TOPK_SCHEMA if topk)
    epoch_step: object  # ... with the EPOCH_STEP_SCHEMA


_import_errors: dict[str, str] = {}


def _load(module: str) -> bool:
    """Import a backend module (which registers its ops); remember why it failed if it does."""
    if module in _import_errors:
        return False
    try:
        importlib.import_module(module, __package__)
        return True
    except Exception as exc:  # missing extension, missing triton, incompatible build
        _import_errors[module] = f"{type(exc).__name__}: {exc}"
        return False


WHAT = {".triton": "tdds_kernels.ops.triton failed to import", ".extension": "the C++ extension is not built"}


def op_reason(name: str, op: str, device) -> str | None:
    """None if backend `name` runs tdds::{op}{suffix} (op one of OPS) on `device`, else why not."""
    spec, device = SPECS[name], torch.device(device)
    if device.type not in spec.devices:
        if spec.devices == (spec.name,):
            return f"backend {spec.name!r} runs on {spec.name} trackers, not on {device.type}"
        return f"device type {device.type!r} is not supported"
    if spec.needs is not None and (reason := spec.needs(device)) is not None:
        return reason
    if spec.module is not None and not _load(spec.module):
        return f"{WHAT[spec.module]} ({_import_errors[spec.module]})"
    key = "CUDA" if device.type == "cuda" else "CPU"
    packet = getattr(torch.ops.tdds, op + spec.suffix, None) if op in spec.ops else None
    if packet is None or not packet.default.has_kernel_for_dispatch_key(key):
        if op == "update_topk":
            return f"backend {spec.name!r} has no compressed-row kernel (prev_topk) for {device.type}"
        if spec.module == ".extension" and op in spec.ops:
            return f"the C++ extension was built without {key} kernels (tdds::{op}{spec.suffix})"
        return f"backend {spec.name!r} has no {key} kernel of tdds::{op}{spec.suffix}"
    return None


def unavailable_reason(name: str, device: torch.device, topk: bool = False) -> str | None:
    """None if backend `name` can run on `device` (with a compressed previous row if `topk`),
    else why not."""
    if name not in SPECS:
        return f"unknown backend {name!r}; expected one of {('auto',) + NAMES}"
    device = torch.device(device)
    for op in ("update_topk" if topk else "update", "epoch_step"):
        if (reason := op_reason(name, op, device)) is not None:
            return reason
    return None


def _auto_reason(name: str, device: torch.device, topk: bool = False) -> str | None:
    """unavailable_reason, and also: auto never picks the Triton interpreter for CUDA tensors
    (it copies every tensor to the host; it is a test tool, asked for only by name)."""
    reason = unavailable_reason(name, device, topk)
    if reason is None and name == "triton" and device.type == "cuda":
        from . import triton as _triton

        if _triton.INTERPRETED:
            return "TRITON_INTERPRET=1 made the kernels interpreted; auto does not use them on CUDA"
    return reason


_warned_fallback: set[str] = set()


def resolve(name: str, device: torch.device, topk: bool = False) -> Backend:
    """The Backend for `name` ("auto" or one of NAMES) on `device`, its update op the
    compressed-row one if `topk`; ValueError if unavailable."""
    device = torch.device(device)
    if name == "auto":
        order = AUTO_ORDER.get(device.type, ("reference",))
        for candidate in order:
            if _auto_reason(candidate, device, topk) is None:
                if candidate == "reference" and len(order) > 1 and (device.type, topk) not in _warned_fallback:
                    _warned_fallback.add((device.type, topk))
                    why = "; ".join(f"{c}: {_auto_reason(c, device, topk)}" for c in order[:-1])
                    warnings.warn(f"tdds_kernels: using the reference backend on {device.type} ({why})", stacklevel=3)
                return _backend(candidate, topk)
        raise ValueError(f"backend: no backend available for device {device}")
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"backend: expected 'auto' or one of {NAMES}, got {name!r}")
    reason = unavailable_reason(name, device, topk)
    if reason is not None:
        raise ValueError(f"backend: {name!r} is not available for device {device}: {reason}")
    return _backend(name, topk)


def _backend(name: str, topk: bool = False) -> Backend:
    suffix = SPECS[name].suffix
    update = getattr(torch.ops.tdds, ("update_topk" if topk else "update") + suffix)
    return Backend(name, update, getattr(torch.ops.tdds, "epoch_step" + suffix))


def fold_op(device) -> object:
    """The baselines' fold (FOLD_SCHEMA) for a state on `device`: the first backend of the device's
    AUTO_ORDER that has one (on CPU the C++ kernel, a serial loop that fetches the packed rows
    ahead: the torch statement's gather and scatter wait on a cache miss per row), else the
    reference op."""
    device = torch.device(device)
    for name in AUTO_ORDER.get(device.type, ()):
        if op_reason(name, "fold_baselines", device) is None:
            return getattr(torch.ops.tdds, "fold_baselines" + SPECS[name].suffix)
    return torch.ops.tdds.fold_baselines


def available(device, topk: bool = False) -> list[str]:
    """Backends that can run on `device` (with a compressed previous row if `topk`), in NAMES order."""
    device = torch.device(device)
    return [n for n in NAMES if unavailable_reason(n, device, topk) is None]
