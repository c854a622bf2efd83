"""Pure-PyTorch statement of tdds::fold_baselines: the baselines' per-sample fold of row_stats.

For every row b whose row_stats are not NaN (the row the update applied to sample n = index[b],
with a usable target), in the packed row of n (ops/schema.py BASELINE_COLUMNS, then the ring):

    forgetting += 1   if count > 0 and last_correct and not correct    (a correct -> wrong step)
    learned     = learned or correct;  last_correct = correct
    el2n        = row el2n             if el2n_epoch is -1 (the latest) or equals the epoch
    margin_sum += row margin;  count += 1
    ring[epoch mod window] = row p_y

Fixed shapes only, no host sync: rows without stats are sent to the spare row N (its contents
are never read), so nothing is selected by a data-dependent mask. Each sample has at most one
row with stats per epoch (the update's first-occurrence rule), so no row is written twice.
"""

from __future__ import annotations

import torch

from . import checks, schema
from .schema import CORRECT, EL2N, MARGIN, RING_COL, TARGET_PROB

schema.define_fold_sibling("")


def fold_baselines(row_stats, index, packed, epoch, el2n_epoch: int) -> None:
    checks.fold("fold_baselines", row_stats, index, packed, epoch)
    n = packed.shape[0] - 1
    window = packed.shape[1] - RING_COL
    # A row with an index outside [0, N) is left out like a row without stats (the update never
    # gives one stats; the C++ kernel skips it too): no index_select past the table.
    idx = index.to(torch.long)
    ok = ~torch.isnan(row_stats[:, CORRECT]) & (idx >= 0) & (idx < n)
    dst = torch.where(ok, idx, n)
    rows = packed.index_select(0, dst)  # changed in place below, then written back
    count, forgetting, last_correct, learned, el2n, margin_sum = rows[:, :RING_COL].unbind(1)
    stats = row_stats.to(torch.float64)
    correct = (stats[:, CORRECT] == 1.0).to(torch.float64)
    forgetting.add_(((count > 0) & (last_correct > correct)).to(torch.float64))
    learned.copy_(torch.maximum(learned, correct))
    last_correct.copy_(correct)
    new_el2n = stats[:, EL2N]
    if el2n_epoch >= 0:
        new_el2n = torch.where(epoch == el2n_epoch, new_el2n, el2n)
    el2n.copy_(new_el2n)
    margin_sum.add_(stats[:, MARGIN])
    count.add_(1.0)
    slot = RING_COL + torch.remainder(epoch.to(torch.long), window)
    rows.scatter_(1, slot.view(1, 1).expand(rows.shape[0], 1), stats[:, TARGET_PROB : TARGET_PROB + 1])
    packed.index_copy_(0, dst, rows)


schema.implement("fold_baselines", fold_baselines)
