"""Triton backend: tdds::update_triton, tdds::update_topk_triton (compressed previous row) and
tdds::epoch_step_triton (shared schemas in ops/schema.py).

Registered for CUDA and for CPU; CPU tensors run only under TRITON_INTERPRET=1 (the tests).
The ops are plain custom ops with (a!) mutation marks and fake kernels (define_sibling), so
torch.compile puts them in its graph as single opaque calls, with no graph break.
"""

from __future__ import annotations

import functools

import triton

from .. import schema
from .epoch_step import epoch_step
from .update import _update_kernel, update
from .update_topk import update_topk

# Whether @triton.jit made interpreted functions: TRITON_INTERPRET is read at definition time.
INTERPRETED = not isinstance(_update_kernel, triton.JITFunction)

schema.define_sibling("_triton")
schema.define_topk_sibling("_triton")


def _cpu(fn):
    @functools.wraps(fn)
    def run(*args):
        if not INTERPRETED:
            raise RuntimeError(
                "tdds::*_triton on CPU tensors needs TRITON_INTERPRET=1 set before tdds_kernels.triton is imported"
            )
        return fn(*args)

    return run


for _name, _fn in (("update_triton", update), ("update_topk_triton", update_topk), ("epoch_step_triton", epoch_step)):
    schema.implement(_name, _fn, ("CUDA",))
    schema.implement(_name, _cpu(_fn), ("CPU",))

__all__ = ["update", "update_topk", "epoch_step", "INTERPRETED"]
