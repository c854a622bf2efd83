"""tdds::epoch_step_triton: close epoch e = counters[EPOCH] over all N samples in one pass.

    missing = seen != e                          counters[MISSING] += Σ missing
    ring[n, (e−1) mod (W−1)] = NaN  if missing   (d_{e−1} is undefined; at e = 0 harmless)
    if e ≥ W−1:  R = sqrt(Σ_j (d_j − m)²) over the defined d_j of ring[n] (m their mean; R = 0
                 with fewer than two), S ← (1 − β)·S + β·R
    counters[EPOCH] = e + 1                      (in the same launch, see the kernel)
Traffic: seen read; with the fold, ring read once (the new NaN is applied in registers) and
score read and written; the NaN marks are the only ring writes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import checks
from .. import schema as _ops
from .update import device_of

_MISSING = tl.constexpr(_ops.MISSING)
_EPOCH = tl.constexpr(_ops.EPOCH)


@triton.jit
def _epoch_step_kernel(
    seen_ptr, ring_ptr, score_ptr, counters_ptr, N, W1, keep, decay, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr
):
    # Read e and advance it in this one launch: every program adds 2^32 to counters[EPOCH] (a
    # ticket in the high half; e in the low half is untouched) and takes e from the old value;
    # the program holding the last ticket runs after every other program has taken e, so it
    # alone writes e + 1 (and clears the tickets). Relaxed atomics suffice: every access to
    # that word is an atomic on that one word, whose read-modify-writes are totally ordered
    # whatever their memory order (coherence), and no other memory is published through it
    # (ring, score and seen are per sample; the next launch sees all of it anyway).
    old = tl.atomic_add(counters_ptr + _EPOCH, tl.full((), 1 << 32, tl.int64), sem="relaxed")
    ticket = old >> 32
    epoch = (old - (ticket << 32)).to(tl.int32)
    last = ticket == tl.num_programs(0) - 1
    tl.atomic_add(counters_ptr + _EPOCH, 1 - (ticket + 1) * (1 << 32), mask=last, sem="relaxed")

    slot = ((epoch - 1) % W1 + W1) % W1  # non-negative for any epoch (an invalid one must not index outside the ring)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    seen = tl.load(seen_ptr + rows, mask=rmask, other=0)
    missing = rmask & (seen != epoch)
    n_missing = tl.sum(missing.to(tl.int64), 0)
    tl.atomic_add(counters_ptr + _MISSING, n_missing, mask=n_missing > 0, sem="relaxed")  # a sum
    tl.store(ring_ptr + rows * W1 + slot, tl.full((BLOCK_N,), float("nan"), tl.float32), mask=missing)
    if epoch >= W1:  # window k = e − W + 1 is complete (a runtime branch: e is on the device)
        cols = tl.arange(0, BLOCK_W)
        r = tl.load(
            ring_ptr + rows[:, None] * W1 + cols[None, :],
            mask=rmask[:, None] & (cols[None, :] < W1),
            other=float("nan"),
        )
        # The NaN just stored, applied in registers (no ordering needed against the store).
        r = tl.where(missing[:, None] & (cols[None, :] == slot), float("nan"), r)
        defined = r == r  # NaN ≠ NaN: undefined d's and the padding lanes drop out
        count = tl.sum(defined.to(tl.float32), 1)
        mean = tl.sum(tl.where(defined, r, 0.0), 1) / tl.maximum(count, 1.0)
        dev = tl.where(defined, r - mean[:, None], 0.0)
        R = tl.where(count >= 2.0, tl.sqrt_rn(tl.sum(dev * dev, 1)), 0.0)
        s = tl.load(score_ptr + rows, mask=rmask, other=0.0)
        tl.store(score_ptr + rows, keep * s + decay * R, mask=rmask)


def epoch_step(
    seen: torch.Tensor, ring: torch.Tensor, score: torch.Tensor, counters: torch.Tensor, decay: float
) -> None:
    """Launcher for EPOCH_STEP_SCHEMA (tdds_kernels/ops/schema.py)."""
    checks.epoch_step("epoch_step_triton", seen, ring, score, counters)
    n, w1 = ring.shape
    block_w = triton.next_power_of_2(w1)
    block_n = max(32, 4096 // block_w)  # a BLOCK_N × BLOCK_W tile, ~16 values a thread
    with device_of(seen):
        # At least one program, even for N = 0: the kernel advances the epoch.
        _epoch_step_kernel[(max(1, triton.cdiv(n, block_n)),)](
            seen, ring, score, counters, n, w1, 1.0 - decay, decay, BLOCK_N=block_n, BLOCK_W=block_w, num_warps=8
        )
