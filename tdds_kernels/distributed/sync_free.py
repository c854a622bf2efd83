"""The sync-free exchange (the NCCL default) of a sharded tracker: no host sync per update.

Per update one all_gather of a fixed-size block per rank: the control row (collectives.FIELDS),
then `capacity` indices, target codes and logit rows (unused rows padded). Every rank receives
every row, keeps the ones it owns, and hands the op the rest with distinct indices past its shard,
which it skips (the local tracker's record_routed counts only this rank's own bad rows as out of
range). Checks that need the data run on the device at the source; checks on shapes and dtypes
(host-only) are kept on the host. Raising on one rank alone would leave the others waiting in the
collective, so all of them are held until end_epoch, which decides the same on every rank
(verdict.py). The capacity and the logits' wire dtype are agreed once, at the first update with
rows (one host sync).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..core.inputs import LOGIT_DTYPES
from .collectives import COL, END_EPOCH, UPDATE, WORDS, Group, check_calls, gather_messages
from .verdict import Verdict

# Target column codes: >= 0 a valid label; these mark everything else.
NO_TARGET, SKIP = -1, -2
# Held on the device until end_epoch (no sync per update).
DEVICE_COUNTS = ("bad_target", "call_mismatch", "targets_mismatch")


def _gather(group: Group, block: torch.Tensor) -> torch.Tensor:
    """(world, block bytes): every rank's block, in rank order, in one collective."""
    out = block.new_empty(group.world_size * block.numel())
    # torch >= 2.13 names it all_gather_single (all_gather_into_tensor is deprecated there)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, block, group=group.process_group)
    return out.view(group.world_size, block.numel())


class SyncFreeExchange:
    """Capacity, wire dtype and the errors held for end_epoch; built from the group, the layout
    and this rank's local tracker, like EagerExchange."""

    sync_free = True

    def __init__(self, group: Group, layout, local, max_batch_size: int | None):
        self.group, self.layout, self.local = group, layout, local
        self.capacity = max_batch_size  # None until agreed at the first update with rows
        self.wire = None
        self.forget_errors()

    def forget_errors(self) -> None:
        self.counts = torch.zeros(len(DEVICE_COUNTS), dtype=torch.int64, device=self.local.device)
        self.exc = None  # the first host-side check that failed on this rank (held for end_epoch)
        self.overflow = 0  # rows of batches larger than the capacity (dropped)
        self.overflow_max = 0
        self.wrong_dtype = 0  # rows whose dtype the wire dtype cannot carry exactly (dropped)

    @property
    def ready(self) -> bool:
        return self.wire is not None

    @property
    def block_bytes(self) -> int:  # the control row; per row an index, a target code, logits
        return 8 * WORDS + self.capacity * (16 + self.local.num_classes * self.wire.itemsize)

    def _parts(self, blocks: torch.Tensor):
        """Control row, indices, target codes and logits of one block (1-d) or of every rank's
        (2-d, as received: copies, rank-major)."""
        cap, C = self.capacity, self.local.num_classes
        edges = (0, 8 * WORDS, 8 * WORDS + 8 * cap, 8 * WORDS + 16 * cap, self.block_bytes)
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
        rows = 0 if exc is not None or kind != UPDATE else logits.shape[0]
        dtype = LOGIT_DTYPES.index(logits.dtype) if rows else -1
        row = torch.tensor([kind, self.local.epoch, rows, dtype], dtype=torch.int64)
        table = self.group.gather_rows(row).tolist()
        check_calls([r[0] for r in table], [r[1] for r in table])
        if max(r[2] for r in table) == 0:
            return False
        if self.capacity is None:
            self.capacity = max(r[2] for r in table)
        dtypes = {r[3] for r in table if r[3] >= 0}
        self.wire = LOGIT_DTYPES[dtypes.pop()] if len(dtypes) == 1 else torch.float32
        return True

    def update(self, logits, index, targets, exc) -> None:
        local, layout, epoch = self.local, self.layout, self.local.epoch
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
        W, cap = self.group.world_size, self.capacity
        # Block layout: control row, then the cap indices, the cap target codes, the cap logit rows
        # (each part contiguous, so every rank's part is one strided slice of what arrives).
        # Zeroed: padding rows are never applied, but the op may read them.
        block = torch.zeros(self.block_bytes, dtype=torch.uint8, device=local.device)
        head, idx, code, x = self._parts(block)
        head[COL["kind"]], head[COL["epoch"]], head[COL["has_targets"]] = UPDATE, epoch, int(targets is not None)
        code.fill_(SKIP)
        at_fault = torch.zeros((), dtype=torch.int64, device=local.device)
        if rows:
            # Checked at the source, on the device: a row with an out-of-range index or label is
            # dropped whole and counted in this rank's out_of_range (labels in bad_target too).
            i = index.to(torch.int64)
            ok = (i >= 0) & (i < layout.num_samples)
            codes = torch.full_like(i, NO_TARGET)
            if targets is not None:
                y = targets.to(torch.int64)
                good_y = (y >= 0) & (y < local.num_classes)
                self.counts[0] += (ok & ~good_y).sum()
                ok, codes = ok & good_y, y
            at_fault = (~ok).sum()
            code[:rows] = torch.where(ok, codes, SKIP)
            idx[:rows] = i
            x[:rows] = logits.detach()
        recv = _gather(self.group, block)

        heads, g_idx, g_code, g_logits = self._parts(recv)  # (W, WORDS), (W*cap,), (W*cap,), (W*cap, C)
        self.counts[2] += (heads[:, COL["has_targets"]] != int(targets is not None)).sum()
        # A block from a rank in another call or epoch (reported by end_epoch) carries no rows.
        # (expand, not repeat_interleave: that one syncs on CUDA to size its output)
        same_call = (heads[:, COL["kind"]] == UPDATE) & (heads[:, COL["epoch"]] == epoch)
        self.counts[1] += (~same_call).sum()
        keep = (
            (g_code != SKIP) & (layout.owner(g_idx) == self.group.rank) & same_call[:, None].expand(W, cap).reshape(-1)
        )
        # In rank order then batch order: the lowest rank's row of a sample counts first. Rows not
        # kept get distinct indices past the shard: after the op's sort each is a run of its own,
        # skipped in one step, where one shared index would make one serial run of (W-1)·cap rows.
        skip_idx = local.num_samples + torch.arange(W * cap, device=g_idx.device)
        local_idx = torch.where(keep, layout.local_row(g_idx), skip_idx)
        local_y = torch.where(keep & (g_code >= 0), g_code, 0) if targets is not None else None
        local.record_routed(g_logits, local_idx, local_y, rows, at_fault)

    def end_epoch(self, fields: dict) -> Verdict:
        """Every rank's end_epoch control row (`fields`: this rank's counts and options) with what
        this rank held. Ready: one block of the update's size, so a rank still in update pairs with
        it instead of hanging in a collective of another size."""
        if not self.ready:
            self.setup(END_EPOCH, None, None)  # raises on every rank if some are still in update
        fields = dict(
            fields,
            status=self.exc is not None,
            overflow=self.overflow,
            overflow_max=self.overflow_max,
            wrong_dtype=self.wrong_dtype,
        )
        epoch = self.local.epoch
        if self.ready:
            block = torch.zeros(self.block_bytes, dtype=torch.uint8, device=self.local.device)
            head = block[: 8 * WORDS].view(torch.int64)
            head[COL["kind"]], head[COL["epoch"]] = END_EPOCH, epoch
            for name, value in fields.items():
                head[COL[name]] = value
            for k, name in enumerate(DEVICE_COUNTS):
                head[COL[name]] = self.counts[k]
            table = _gather(self.group, block)[:, : 8 * WORDS].contiguous().view(torch.int64).tolist()
            check_calls([row[COL["kind"]] for row in table], [row[COL["epoch"]] for row in table])
        else:  # no rank has had rows: every rank is here (setup agreed), the counts are zero
            table = self.group.control(END_EPOCH, epoch, **fields)
        messages = None
        if any(row[COL["status"]] for row in table):  # host-side checks: their messages travel as objects
            messages = gather_messages(self.group.process_group, self.exc)
        return Verdict(table, messages, self.capacity, self.wire)
