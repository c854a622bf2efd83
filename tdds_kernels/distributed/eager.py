"""The eager exchange (the gloo default) of a sharded tracker: per update one all_gather of the
control row (collectives.FIELDS, then the rows this rank sends to each rank; the one host sync),
so every rank sees every error and a bad batch raises on every rank before anything is recorded,
then one all_to_all_single of exactly the rows each rank owns. Nothing is held for end_epoch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..core.inputs import LOGIT_DTYPES
from .collectives import COL, END_EPOCH, UPDATE, WORDS, Group
from .verdict import Verdict


class EagerExchange:
    """Moves each row to the rank that owns its sample; built from the group, the layout and this
    rank's local tracker, like SyncFreeExchange."""

    sync_free = False
    capacity = None

    def __init__(self, group: Group, layout, local):
        self.group, self.layout, self.local = group, layout, local

    def forget_errors(self) -> None:
        """Nothing is held between calls."""

    def update(self, logits, index, targets, exc) -> None:
        group, layout, W = self.group, self.layout, self.group.world_size
        fields = {"status": exc is not None, "has_targets": targets is not None}
        counts = None
        if exc is None:
            fields["dtype"] = LOGIT_DTYPES.index(logits.dtype)
            idx = index.to(torch.int64)
            bad = (idx < 0) | (idx >= layout.num_samples)
            fields["bad_index"], fields["first_index"] = group.bad_summary(idx, bad)
            if targets is not None:
                y = targets.to(torch.int64)
                bad = (y < 0) | (y >= self.local.num_classes)
                fields["bad_target"], fields["first_target"] = group.bad_summary(y, bad)
            owner = layout.owner(idx)
            # not bincount: CUDA has no deterministic bincount (use_deterministic_algorithms)
            counts = (owner[None, :] == torch.arange(W, device=owner.device)[:, None]).sum(dim=1)
        table = group.control(UPDATE, self.local.epoch, counts, **fields)
        self.raise_batch_errors(table, exc)

        # Rows sorted by owner, packed as bytes so one collective carries every dtype.
        order = torch.argsort(owner, stable=True)
        wire = logits.dtype if len({row[COL["dtype"]] for row in table}) == 1 else torch.float32
        parts = [layout.local_row(idx[order]).view(torch.uint8).reshape(-1, 8)]
        if targets is not None:
            parts.append(targets[order].to(torch.int64).view(torch.uint8).reshape(-1, 8))
        parts.append(logits[order].detach().to(wire).contiguous().view(torch.uint8))
        send = torch.cat(parts, dim=1)
        row_bytes = send.shape[1]
        recv_counts = [table[src][WORDS + group.rank] for src in range(W)]
        recv = send.new_empty((sum(recv_counts), row_bytes))
        dist.all_to_all_single(
            recv.view(-1),
            send.view(-1),
            [c * row_bytes for c in recv_counts],
            [c * row_bytes for c in table[group.rank][WORDS:]],
            group=group.process_group,
        )
        # reshape(-1) copies a column slice out, except a single row, which stays aligned in place
        local_idx = recv[:, :8].reshape(-1).view(torch.int64)
        local_targets = recv[:, 8:16].reshape(-1).view(torch.int64) if targets is not None else None
        local_logits = recv[:, 8 * (len(parts) - 1) :].reshape(-1).view(wire).reshape(-1, self.local.num_classes)
        self.local.update(local_logits, local_idx, local_targets)

    def raise_batch_errors(self, table, exc) -> None:
        N, C = self.layout.num_samples, self.local.num_classes
        errors = []  # (rank, type, message as the single tracker raises it; None: travels as object)
        for r, row in enumerate(table):
            if row[COL["status"]]:
                errors.append((r, None, None))
            elif row[COL["bad_index"]]:
                text = (
                    f"index: expected dataset indices in [0, {N}), got "
                    f"{row[COL['bad_index']]} outside it (first: {row[COL['first_index']]})"
                )
                errors.append((r, ValueError, text))
            elif row[COL["bad_target"]]:
                text = (
                    f"targets: expected class labels in [0, {C}), got "
                    f"{row[COL['bad_target']]} outside it (first: {row[COL['first_target']]})"
                )
                errors.append((r, ValueError, text))
        if errors:
            mine = next((e for e in errors if e[0] == self.group.rank), None)
            if mine is not None and mine[1] is not None:
                exc = mine[1](mine[2])
            if any(e[1] is None for e in errors):  # Python-side checks: their messages travel as objects
                self.group.agree(exc, "update")
            if mine is not None:
                raise exc
            r, kind, text = errors[0]
            raise kind(f"update: rank {r} failed, so no rank went on: {text}")
        has_targets = [row[COL["has_targets"]] for row in table]
        if len(set(has_targets)) > 1:
            raise ValueError(
                "targets: passed on ranks "
                f"{[r for r, t in enumerate(has_targets) if t]} but not on the others; "
                "pass them on every rank or on none"
            )

    def end_epoch(self, fields: dict) -> Verdict:
        """Every rank's end_epoch control row (`fields`: this rank's counts and options)."""
        return Verdict(self.group.control(END_EPOCH, self.local.epoch, **fields))
