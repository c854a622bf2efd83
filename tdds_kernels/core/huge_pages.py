"""Large host tensors on transparent huge pages (Linux): the tracker's per-sample state.

The update reads and writes one row of prev (N, C) per batch row, at random over the whole
table: at ImageNet shape (N = 1.28M, C = 1000, float32) that is 5 GB, over a million 4 KiB
pages, so nearly every row costs a TLB miss whose page-table walk misses the caches too (the
page tables alone are 10 MB). On 2 MiB pages the tables shrink 512-fold: a whole ImageNet-shape
epoch is faster, and allocation slower (the fault-in of huge pages); the measured numbers are in
docs/performance.md ("ImageNet scale on CPU").

How: madvise(MADV_HUGEPAGE) on the tensor's whole 2 MiB pages before anything touches them, so
the first touch (the fill) faults huge pages in. Advice only: where the kernel has THP set to
"never", or on another OS, the tensor is an ordinary one. torch's THP_MEM_ALLOC_ENABLE=1 does
this for every large allocation, but it is read once per process, before a library is imported.
"""

from __future__ import annotations

import ctypes
import sys

import torch

MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>
HUGE_PAGE = 2 << 20
MIN_BYTES = 32 << 20  # below this the TLB covers the tensor anyway


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def advise(t: torch.Tensor) -> bool:
    """Ask for huge pages under the whole 2 MiB pages of a CPU tensor's memory; True if the
    kernel took the advice (it applies to pages faulted in afterwards)."""
    if _MADVISE is None or t.device.type != "cpu" or t.nbytes < MIN_BYTES:
        return False
    start = -(-t.data_ptr() // HUGE_PAGE) * HUGE_PAGE
    end = (t.data_ptr() + t.nbytes) // HUGE_PAGE * HUGE_PAGE
    return end > start and _MADVISE(start, end - start, MADV_HUGEPAGE) == 0


def full(shape, fill, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.full, with a large CPU tensor's pages advised huge before the fill touches them."""
    t = torch.empty(shape, dtype=dtype, device=device)
    advise(t)
    return t.fill_(fill)
