"""Pure-PyTorch statement of the compressed previous row (docs/design.md §2.1): tdds::update_topk.

The previous row of a sample is kept as its K largest probabilities' logs and class ids plus one
value for the other C − K classes (its tail), instead of all C logs:

    prev_val[n, j]  = log(p_{c_j} + ε)        c_0..c_{K−1}: the K largest p, largest first,
    prev_idx[n, j]  = c_j                     ties broken by the lower class id
    prev_rest[n]    = log(r / (C − K) + ε)    r = Σ p_c over the other classes (ε when K = C)

The tie rule (docs/design.md §2.1) is the same on every backend: of equal p (as that backend's
float32 softmax computes them) the lower class id is kept and stored first, so the kept set and
its order are unique whatever order a backend searches in.

d is evaluated with the stored classes against their stored logs, and the old tail taken to have
the new row's shape at its own stored mean: with m = Σ p_{t+1,c} over the classes outside the
stored ids,

    d = Σ_j | p_{t+1,c_j} · (log(p_{t+1,c_j} + ε) − prev_val[n, j]) |
        + m · | log(m / (C − K) + ε) − prev_rest[n] |

(for a tail class, log(q_c + ε) = log(p_{t+1,c} + ε) − log(m / (C − K) + ε) + prev_rest: each
tail term is p_{t+1,c} times the same log step, so the tail costs one sum, not a log per class).
With K = C every class is stored exactly (in the storage dtype, as the full row stores it) and
the tail is empty, so the result is the full row's bit for bit; epoch_step is the full-row op
(it never reads prev).
"""

from __future__ import annotations

import torch

from . import checks, schema
from .reference import applied_rows, record, write_row_stats
from .schema import EPS

schema.define_topk_sibling("")


def previous_logs(prev_val, prev_idx, num_classes: int):
    """(log q, stored): the (R, C) float32 stored logs at their ids (0 elsewhere) and the (R, C)
    mask of the stored classes."""
    ids = prev_idx.to(torch.long)
    log_q = torch.zeros(ids.shape[0], num_classes, dtype=torch.float32, device=ids.device)
    log_q.scatter_(1, ids, prev_val.to(torch.float32))
    return log_q, torch.zeros_like(log_q, dtype=torch.bool).scatter_(1, ids, True)


def compressed_d(p, log_p, prev_val, prev_idx, prev_rest) -> torch.Tensor:
    """d (R,) of rows p against their compressed previous rows (module docstring): the stored
    classes' terms summed by class as the full row sums them (so K = C is the full row's d bit for
    bit), plus the tail's one term, its mass summed in float64 over the classes it holds (not 1
    − the stored mass: a settled sample's small tail would be lost to cancellation)."""
    num_classes, k = p.shape[1], prev_val.shape[1]
    log_q, stored = previous_logs(prev_val, prev_idx, num_classes)
    d = torch.where(stored, (p * (log_p - log_q)).abs(), 0.0).sum(dim=1)
    if k == num_classes:
        return d
    mass = torch.where(stored, 0.0, p.double()).sum(dim=1)
    step = torch.log(mass / (num_classes - k) + EPS) - prev_rest.double()
    return d + (mass * step.abs()).to(torch.float32)


def compress(p: torch.Tensor, log_p: torch.Tensor, k: int):
    """(values, ids, rest) of rows p (R, C): the K largest p (largest first, ties to the lower
    class id), the logs stored for them and the residual log; float32, ids int64."""
    num_classes = p.shape[1]
    # A stable descending sort keeps equal p in class order: the lower id wins a tie, which
    # makes the kept set independent of how a backend searches.
    sorted_p, order = torch.sort(p, dim=1, descending=True, stable=True)
    ids = order[:, :k]
    values = log_p.gather(1, ids)
    if k < num_classes:
        # Summed over the classes it stands for (not 1 − the kept mass, which loses the small
        # residual to cancellation), in float64: a float32 sum of 21,713 near-equal tail values
        # drifts by ~3e-5 relative, which for a settled sample is a 1e-2 relative error on d.
        rest_sum = sorted_p[:, k:].sum(dim=1, dtype=torch.float64)
        mean_rest = (rest_sum / (num_classes - k)).to(torch.float32)
    else:
        mean_rest = torch.zeros_like(p[:, 0])
    return values, ids, torch.log(mean_rest + EPS)


def update_topk(
    logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters, targets=None, row_stats=None
) -> None:
    """Record one batch of epoch e = counters[EPOCH] with a compressed previous row: the same
    rows are applied and counted (and row_stats written) as by tdds::update (docs/design.md §3)."""
    checks.update_topk(
        "update_topk", logits, index, prev_val, prev_idx, prev_rest, seen, ring, counters, targets, row_stats
    )
    x, n, epoch, rows = applied_rows(logits, index, prev_val.shape[0], seen, counters)
    if targets is not None:
        write_row_stats(x, targets, rows, row_stats)
    p = torch.softmax(x, dim=1)
    log_p = torch.log(p + EPS)
    d = compressed_d(p, log_p, prev_val.index_select(0, n), prev_idx.index_select(0, n), prev_rest.index_select(0, n))
    record(d, n, epoch, seen, ring)
    values, ids, rest = compress(p, log_p, prev_val.shape[1])
    prev_val.index_copy_(0, n, values.to(prev_val.dtype))
    prev_idx.index_copy_(0, n, ids.to(prev_idx.dtype))
    prev_rest.index_copy_(0, n, rest.to(prev_rest.dtype))


schema.implement("update_topk", update_topk)
