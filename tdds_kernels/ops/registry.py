"""Which op pair a tracker calls: resolved once, by name and device; the tracker never branches.

    reference  tdds::update / tdds::epoch_step            always available, any device
    triton     tdds::update_triton / ..._triton           CUDA; CPU only under TRITON_INTERPRET=1
    cpu        tdds::update_ext / ..._ext (CPU kernel)    C++ extension, CPU trackers
    cuda       tdds::update_ext / ..._ext (CUDA kernel)   C++ extension built with CUDA

The baselines' fold (tdds::fold_baselines*, fold_op) is the C++ CPU kernel where the extension
has it and the reference op everywhere else, whatever the backend.

With topk=True (a tracker's prev_topk=K) the update op is the backend's tdds::update_topk{suffix}
sibling; a backend without one is unavailable for such trackers (reference: tdds::update_topk).

On CUDA, "auto" takes triton, then cuda, then reference, and never the Triton interpreter
(TRITON_INTERPRET=1 is a CPU test tool; by name, backend="triton" still accepts it).

Host syncs on CUDA (tests/test_cuda_runtime.py checks each under sync debug mode "error"):
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
from dataclasses import dataclass

import torch

from . import reference, reference_fold, reference_topk  # noqa: F401  (define the reference ops)

NAMES = ("reference", "triton", "cpu", "cuda")
# Order "auto" tries per device type, fastest first (benchmarks/results/ has the measurements).
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}


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


def _has_kernel(qualname: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)


SUFFIX = {"reference": "", "triton": "_triton", "cpu": "_ext", "cuda": "_ext"}


def unavailable_reason(name: str, device: torch.device, topk: bool = False) -> str | None:
    """None if backend `name` can run on `device` (with a compressed previous row if `topk`),
    else why not."""
    reason = _base_reason(name, device)
    if reason is None and topk:
        qualname = f"tdds::update_topk{SUFFIX[name]}"
        key = "CUDA" if device.type == "cuda" else "CPU"
        if not torch._C._dispatch_has_kernel(qualname) or not _has_kernel(qualname, key):
            return f"backend {name!r} has no compressed-row kernel (prev_topk) for {device.type}"
    return reason


def _base_reason(name: str, device: torch.device) -> str | None:
    kind = device.type
    if name == "reference":
        return None if kind in ("cpu", "cuda") else f"device type {kind!r} is not supported"
    if name == "triton":
        if kind == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "the triton backend runs on CPU tensors only with TRITON_INTERPRET=1"
        if kind not in ("cpu", "cuda"):
            return f"device type {kind!r} is not supported"
        if not _load(".triton"):
            return f"tdds_kernels.ops.triton failed to import ({_import_errors['.triton']})"
        return None
    if name in ("cpu", "cuda"):
        if kind != name:
            return f"backend {name!r} runs on {name} trackers, not on {kind}"
        if not _load(".extension"):
            return f"the C++ extension is not built ({_import_errors['.extension']})"
        key = "CPU" if name == "cpu" else "CUDA"
        if not _has_kernel("tdds::update_ext", key):
            return f"the C++ extension was built without {key} kernels"
        return None
    return f"unknown backend {name!r}; expected one of {('auto',) + NAMES}"


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
    suffix = SUFFIX[name]
    update = getattr(torch.ops.tdds, ("update_topk" if topk else "update") + suffix)
    return Backend(name, update, getattr(torch.ops.tdds, "epoch_step" + suffix))


def fold_op(device) -> object:
    """The baselines' fold (FOLD_SCHEMA) for a state on `device`: the C++ CPU kernel where the
    extension has one (a serial loop that fetches the packed rows ahead: the torch statement's
    gather and scatter wait on a cache miss per row), else the reference op."""
    device = torch.device(device)
    if device.type == "cpu" and _base_reason("cpu", device) is None and _has_kernel("tdds::fold_baselines_ext", "CPU"):
        return torch.ops.tdds.fold_baselines_ext
    return torch.ops.tdds.fold_baselines


def available(device, topk: bool = False) -> list[str]:
    """Backends that can run on `device` (with a compressed previous row if `topk`), in NAMES order."""
    device = torch.device(device)
    return [n for n in NAMES if unavailable_reason(n, device, topk) is None]
