"""How a sharded tracker's update moves each row to the rank that owns its sample.

eager_update (the gloo default): one all_gather of a control row per step (every rank sees every
error, so a bad batch raises on every rank before anything is recorded; one host sync) and one
all_to_all_single of exactly the rows each rank owns.

SyncFreeExchange (the NCCL default): one all_gather per step of a fixed-size block per rank, a
16-int64 header then `capacity` indices, target codes and logit rows (unused rows padded)
and no host sync: every rank receives every row, keeps the ones it owns, and hands the rest to the
op with an out-of-range local index, which skips them (the out_of_range counter is corrected on
the device). Checks that need the data run on the device and are reported by end_epoch, like a
single tracker's out-of-range indices on CUDA; checks on shapes and dtypes (host-only) are kept on
the host and reported there too, since raising on one rank alone would leave the others waiting
in the collective. The capacity and the logits' wire dtype are agreed once, at the first update
with rows (one host sync).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..core.tracker import LOGIT_DTYPES
from ..ops.schema import OUT_OF_RANGE
from .collectives import _COL, _HEAD

HEADER = 16  # int64 words at the start of each rank's block
UPDATE, END_EPOCH = 1, 2
# Target column codes: >= 0 a valid label; these mark everything else.
NO_TARGET, SKIP = -1, -2
# Device-side error counts the sync-free path keeps until end_epoch.
PENDING = ("bad_target", "targets_mismatch", "call_mismatch")


def eager_update(tracker, logits, index, targets, exc) -> None:
    """The control exchange, then an all_to_all of the rows (module docstring)."""
    group, W = tracker._group, tracker.world_size
    fields = {"status": exc is not None, "has_targets": targets is not None}
    counts = None
    if exc is None:
        fields["dtype"] = LOGIT_DTYPES.index(logits.dtype)
        idx = index.to(torch.int64)
        bad = (idx < 0) | (idx >= tracker.num_samples)
        fields["bad_index"], fields["first_index"] = group.bad_summary(idx, bad)
        if targets is not None:
            y = targets.to(torch.int64)
            bad = (y < 0) | (y >= tracker.num_classes)
            fields["bad_target"], fields["first_target"] = group.bad_summary(y, bad)
        owner = tracker.layout.owner(idx)
        # not bincount: CUDA has no deterministic bincount (use_deterministic_algorithms)
        counts = (owner[None, :] == torch.arange(W, device=owner.device)[:, None]).sum(dim=1)
    table = group.control("update", tracker.epoch, counts, **fields)
    raise_batch_errors(tracker, table, exc)

    # Rows sorted by owner, packed as bytes so one collective carries every dtype.
    order = torch.argsort(owner, stable=True)
    wire = logits.dtype if len({row[_COL["dtype"]] for row in table}) == 1 else torch.float32
    parts = [tracker.layout.local_row(idx[order]).view(torch.uint8).reshape(-1, 8)]
    if targets is not None:
        parts.append(targets[order].to(torch.int64).view(torch.uint8).reshape(-1, 8))
    parts.append(logits[order].detach().to(wire).contiguous().view(torch.uint8))
    send = torch.cat(parts, dim=1)
    row_bytes = send.shape[1]
    recv_counts = [table[src][_HEAD + tracker.rank] for src in range(W)]
    recv = send.new_empty((sum(recv_counts), row_bytes))
    dist.all_to_all_single(
        recv.view(-1),
        send.view(-1),
        [c * row_bytes for c in recv_counts],
        [c * row_bytes for c in table[tracker.rank][_HEAD:]],
        group=tracker.process_group,
    )
    # reshape(-1) copies a column slice out, except a single row, which stays aligned in place
    local_idx = recv[:, :8].reshape(-1).view(torch.int64)
    local_targets = recv[:, 8:16].reshape(-1).view(torch.int64) if targets is not None else None
    local_logits = recv[:, 8 * (len(parts) - 1) :].reshape(-1).view(wire).reshape(-1, tracker.num_classes)
    tracker.local.update(local_logits, local_idx, local_targets)


def raise_batch_errors(tracker, table, exc):
    N, C = tracker.num_samples, tracker.num_classes
    errors = []  # (rank, type, message as the single tracker raises it; None: travels as object)
    for r, row in enumerate(table):
        if row[_COL["status"]]:
            errors.append((r, None, None))
        elif row[_COL["bad_index"]]:
            errors.append(
                (
                    r,
                    ValueError,
                    f"index: expected dataset indices in [0, {N}), got "
                    f"{row[_COL['bad_index']]} outside it (first: {row[_COL['first_index']]})",
                )
            )
        elif row[_COL["bad_target"]]:
            errors.append(
                (
                    r,
                    ValueError,
                    f"targets: expected class labels in [0, {C}), got "
                    f"{row[_COL['bad_target']]} outside it (first: {row[_COL['first_target']]})",
                )
            )
    if errors:
        mine = next((e for e in errors if e[0] == tracker.rank), None)
        if mine is not None and mine[1] is not None:
            exc = mine[1](mine[2])
        if any(e[1] is None for e in errors):  # Python-side checks: their messages travel as objects
            tracker._group.agree(exc, "update")
        if mine is not None:
            raise exc
        r, kind, text = errors[0]
        raise kind(f"update: rank {r} failed, so no rank went on: {text}")
    has_targets = [row[_COL["has_targets"]] for row in table]
    if len(set(has_targets)) > 1:
        raise ValueError(
            "targets: passed on ranks "
            f"{[r for r, t in enumerate(has_targets) if t]} but not on the others; "
            "pass them on every rank or on none"
        )


def _gather(group, block: torch.Tensor) -> torch.Tensor:
    """(world, block bytes): every rank's block, in rank order, in one collective."""
    out = block.new_empty(group.world_size * block.numel())
    # torch >= 2.13 names it all_gather_single (all_gather_into_tensor is deprecated there)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, block, group=group.process_group)
    return out.view(group.world_size, block.numel())


class SyncFreeExchange:
    """Per-tracker state of the sync-free path: capacity, wire dtype, errors held for end_epoch."""

    def __init__(self, tracker, max_batch_size: int | None):
        self.tracker = tracker
        self.capacity = max_batch_size  # None until agreed at the first update with rows
        self.wire = None
        self.forget_errors()

    def forget_errors(self) -> None:
        self.pending = torch.zeros(len(PENDING), dtype=torch.int64, device=self.tracker.device)
        self.exc = None  # the first host-side check that failed on this rank (held for end_epoch)
        self.overflow = 0  # rows of batches larger than the capacity (dropped)
        self.overflow_max = 0
        self.wrong_dtype = 0  # rows whose dtype the wire dtype cannot carry exactly (dropped)

    @property
    def ready(self) -> bool:
        return self.wire is not None

    @property
    def row_bytes(self) -> int:  # index, target code, logits
        return 16 + self.tracker.num_classes * self.wire.itemsize

    @property
    def block_bytes(self) -> int:
        return 8 * HEADER + self.capacity * self.row_bytes

    def _parts(self, blocks: torch.Tensor):
        """Header, indices, target codes and logits of one block (1-d) or of every rank's (2-d,
        as received: copies, rank-major)."""
        cap, C = self.capacity, self.tracker.num_classes
        edges = (0, 8 * HEADER, 8 * HEADER + 8 * cap, 8 * HEADER + 16 * cap, self.block_bytes)
        out = []
        for (a, b), dtype in zip(zip(edges, edges[1:]), (torch.int64, torch.int64, torch.int64, self.wire)):
            part = blocks[..., a:b]
            if blocks.dim() == 2:
                part = part.contiguous()
            out.append(part.view(dtype))
        head, idx, code, x = out
        if blocks.dim() == 1:
            return head, idx, code, x.view(cap, C)
        return head, idx.reshape(-1), code.reshape(-1), x.reshape(-1, C)

    def setup(self, kind: int, logits, exc) -> bool:
        """The one agreement (host sync) on capacity and wire dtype; False if no rank has rows yet."""
        t = self.tracker
        rows = 0 if exc is not None or kind != UPDATE else logits.shape[0]
        dtype = LOGIT_DTYPES.index(logits.dtype) if rows else -1
        row = torch.zeros(4, dtype=torch.int64, device=t.device)
        row[0], row[1], row[2], row[3] = kind, t.epoch, rows, dtype
        table = t._group.gather_rows(row).tolist()
        check_calls(t, [r[0] for r in table], [r[1] for r in table])
        if max(r[2] for r in table) == 0:
            return False
        if self.capacity is None:
            self.capacity = max(r[2] for r in table)
        dtypes = {r[3] for r in table if r[3] >= 0}
        self.wire = LOGIT_DTYPES[dtypes.pop()] if len(dtypes) == 1 else torch.float32
        return True

    def update(self, logits, index, targets, exc) -> None:
        t = self.tracker
        if exc is not None and self.exc is None:
            self.exc = exc
        if not self.ready and not self.setup(UPDATE, logits, exc):
            return
        rows = 0 if exc is not None else logits.shape[0]
        if rows > self.capacity:
            self.overflow += rows
            self.overflow_max = max(self.overflow_max, rows)
            rows = 0
        elif rows and logits.dtype != self.wire and self.wire != torch.float32:
            self.wrong_dtype += rows
            rows = 0
        W, cap, dev = t.world_size, self.capacity, t.device
        # Block layout: header, then the cap indices, the cap target codes, the cap logit rows
        # (each part contiguous, so every rank's part is one strided slice of what arrives).
        # Zeroed: padding rows are never applied, but the op may read them.
        block = torch.zeros(self.block_bytes, dtype=torch.uint8, device=dev)
        head, idx, code, x = self._parts(block)
        head[0], head[1], head[2] = UPDATE, t.epoch, int(targets is not None)
        code.fill_(SKIP)
        bad_index = None
        if rows:
            # Checked at the source, on the device: an out-of-range index counts in this rank's
            # out_of_range (as in a single tracker), a bad label in `pending`; both rows are skipped.
            i = index.to(torch.int64)
            in_range = (i >= 0) & (i < t.num_samples)
            bad_index = (~in_range).sum()
            ok = in_range
            if targets is None:
                codes = torch.full_like(i, NO_TARGET)
            else:
                y = targets.to(torch.int64)
                good_y = (y >= 0) & (y < t.num_classes)
                self.pending[0] += (in_range & ~good_y).sum()
                ok = ok & good_y
                codes = y
            code[:rows] = torch.where(ok, codes, SKIP)
            idx[:rows] = i
            x[:rows] = logits.detach()
        recv = _gather(t._group, block)

        heads, g_idx, g_code, g_logits = self._parts(recv)  # (W, HEADER), (W*cap,), (W*cap,), (W*cap, C)
        self.pending[1] += (heads[:, 2] != int(targets is not None)).sum()
        # A block from a rank in another call or epoch (reported by end_epoch) carries no rows.
        # (expand, not repeat_interleave: that one syncs on CUDA to size its output)
        same_call = (heads[:, 0] == UPDATE) & (heads[:, 1] == t.epoch)
        self.pending[2] += (~same_call).sum()
        keep = (g_code != SKIP) & (t.layout.owner(g_idx) == t.rank) & same_call[:, None].expand(W, cap).reshape(-1)
        # In rank order then batch order: the lowest rank's row of a sample counts first.
        local_idx = torch.where(keep, t.layout.local_row(g_idx), t.local.num_samples)
        local_y = torch.where(keep & (g_code >= 0), g_code, 0) if targets is not None else None
        t.local._record(g_logits, local_idx, local_y, rows)
        # The op counted every skipped row as out of range; only this rank's own bad indices are.
        fix = -(~keep).sum()
        if bad_index is not None:
            fix = fix + bad_index
        t.local._state.counters[OUT_OF_RANGE] += fix

    def end_epoch_table(self, new: dict, error_mode: bool) -> list[list[int]]:
        """Every rank's end_epoch header (one block of the update's size: a rank still in update
        pairs with it instead of hanging on a collective of another size)."""
        t = self.tracker
        block = torch.zeros(self.block_bytes, dtype=torch.uint8, device=t.device)
        head = block[: 8 * HEADER].view(torch.int64)
        values = [
            END_EPOCH,
            t.epoch,
            int(self.exc is not None),
            self.overflow,
            self.overflow_max,
            self.wrong_dtype,
            new["out_of_range"],
            new["nonfinite"],
            int(error_mode),
        ]
        for k, v in enumerate(values):
            head[k] = v
        head[len(values) : len(values) + len(PENDING)] = self.pending
        recv = _gather(t._group, block)
        return recv[:, : 8 * HEADER].contiguous().view(torch.int64).tolist()


def check_calls(tracker, kinds, epochs) -> None:
    names = {UPDATE: "update", END_EPOCH: "end_epoch"}
    calls = [names.get(k, "?") for k in kinds]
    if len(set(calls)) > 1:
        raise RuntimeError(
            f"the ranks made different calls {calls}; every rank must call "
            "update() once per step and end_epoch() once per epoch"
        )
    if len(set(epochs)) > 1:
        raise RuntimeError(
            f"the ranks are in different epochs {epochs}; every rank must call end_epoch() once per epoch"
        )


# How end_epoch names an update that failed earlier on another rank (the sync-free path holds it).
HELD = "in an update of this epoch, whose rows were skipped (the epoch is not closed)"


def raise_held_errors(tracker, table) -> None:
    """Raise on every rank what the sync-free updates of this epoch held (end_epoch's table:
    kind, epoch, status, overflow, overflow_max, wrong_dtype, out_of_range, nonfinite,
    error_mode, then PENDING)."""
    ex, e = tracker._exchange, tracker.epoch
    if any(row[2] for row in table):  # a host-side check: its message travels as an object
        tracker._group.agree(ex.exc, "update", HELD)
    bad_target, targets_mismatch, call_mismatch = (sum(row[9 + k] for row in table) for k in range(3))
    if call_mismatch:
        raise RuntimeError(
            f"update: in epoch {e} some ranks called update() while others called end_epoch() or were "
            "in another epoch; every rank must call update() once per step and end_epoch() once per epoch"
        )
    if targets_mismatch:
        raise ValueError(
            f"targets: in epoch {e} they were passed on some ranks but not on the others; "
            "pass them on every rank or on none"
        )
    for r, row in enumerate(table):
        if row[3]:
            raise ValueError(
                f"logits: rank {r} passed a batch of {row[4]} rows in epoch {e}, more than the "
                f"{ex.capacity} rows per rank the sync-free exchange carries (the first batch's size "
                f"unless max_batch_size is given); its {row[3]} rows were skipped and the epoch is not "
                "closed: pass max_batch_size= to the tracker"
            )
        if row[5]:
            raise TypeError(
                f"logits: rank {r} passed {row[5]} rows in epoch {e} in another dtype than the first "
                f"update's {ex.wire}, which the sync-free exchange carries; they were skipped and the "
                "epoch is not closed: keep one logits dtype, or pass float32 logits"
            )
    if bad_target:
        raise ValueError(
            f"targets: {bad_target} rows of epoch {e} had class labels outside [0, "
            f"{tracker.num_classes}) and were skipped; the epoch is not closed"
        )
