"""Pure-PyTorch statement of the compressed previous row (docs/design.md §2.1): tdds::update_topk.

The previous row of a sample is kept as its K largest probabilities' logs and class ids plus one
value for the other C − K classes, instead of all C logs:

    prev_val[n, j]  = log(p_{c_j} + ε)        c_0..c_{K−1}: the K largest p, largest first,
    prev_idx[n, j]  = c_j                     ties broken by the lower class id
    prev_rest[n]    = log(r / (C − K) + ε)    r = Σ p_c over the other classes (ε when K = C)

The tie rule (docs/design.md §2.1) is the same on every backend: of equal p (as that backend's
float32 softmax computes them) the lower class id is kept and stored first, so the kept set and
its order are unique whatever order a backend searches in.

and d is evaluated against the row that this describes:

    log q_c = prev_val[n, j]  if c = c_j for some j,   prev_rest[n] otherwise
    d       = Σ_c | p_{t+1,c} · (log(p_{t+1,c} + ε) − log q_c) |

With K = C every class is stored exactly (in the storage dtype, as the full row stores it), so
the result is the full row's bit for bit; epoch_step is the full-row op (it never reads prev).
"""

from __future__ import annotations

import torch

from . import checks, schema
from .reference import applied_rows, contribution, record, write_row_stats
from .schema import EPS

schema.define_topk_sibling("")


def previous_logs(prev_val, prev_idx, prev_rest, num_classes: int) -> torch.Tensor:
    """The (R, C) float32 log q the compressed rows stand for: stored logs at their ids, the
    residual log elsewhere."""
    log_q = prev_rest.to(torch.float32)[:, None].expand(-1, num_classes).clone()
    return log_q.scatter_(1, prev_idx.to(torch.long), prev_val.to(torch.float32))


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
    log_q = previous_logs(
        prev_val.index_select(0, n), prev_idx.index_select(0, n), prev_rest.index_select(0, n), p.shape[1]
    )
    d = contribution(p, log_p, log_q)
    record(d, n, epoch, seen, ring)
    values, ids, rest = compress(p, log_p, prev_val.shape[1])
    prev_val.index_copy_(0, n, values.to(prev_val.dtype))
    prev_idx.index_copy_(0, n, ids.to(prev_idx.dtype))
    prev_rest.index_copy_(0, n, rest.to(prev_rest.dtype))


schema.implement("update_topk", update_topk)
