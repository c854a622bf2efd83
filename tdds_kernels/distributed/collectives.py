"""The collectives of a sharded tracker: gathers in rank order, agreement on errors, the control
row every rank contributes once per update/end_epoch call. Failures on one rank raise on every
rank, so no rank is left waiting in a collective."""

from __future__ import annotations

import torch
import torch.distributed as dist

# Columns of the control row every rank contributes to one all_gather per update/end_epoch call.
_FIELDS = (
    "kind",
    "status",
    "epoch",
    "has_targets",
    "dtype",
    "bad_index",
    "first_index",
    "bad_target",
    "first_target",
    "out_of_range",
    "nonfinite",
    "error_mode",
)
_COL = {name: i for i, name in enumerate(_FIELDS)}
_HEAD = len(_FIELDS)  # then the rows this rank sends to each rank
_KINDS = {1: "update", 2: "end_epoch"}


def _exc_type(name: str):
    return {"TypeError": TypeError, "ValueError": ValueError}.get(name, RuntimeError)


class Group:
    """A process group seen from one rank, with the tracker's device for collective tensors."""

    def __init__(self, process_group, device: torch.device):
        self.process_group = process_group
        self.device = device
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)

    def gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """(world, *row.shape): every rank's `row`, in rank order (on the tracker's device)."""
        dtype = row.dtype
        # gloo has no bool and no int16 (prev_topk's class ids): sent widened, returned as given.
        wire = {torch.bool: torch.uint8, torch.int16: torch.int32}.get(dtype, dtype)
        row = row.to(self.device, wire).contiguous()
        out = [torch.empty_like(row) for _ in range(self.world_size)]
        dist.all_gather(out, row, group=self.process_group)
        return torch.stack(out).to(dtype)

    def agree(self, exc: BaseException | None, what: str, why: str = "so no rank went on") -> None:
        """Raise on every rank if `exc` is set on any: the failing rank its own error, the rest
        the same type and text naming the first failing rank."""
        flags = self.gather_rows(torch.tensor([exc is not None], dtype=torch.int64))[:, 0].tolist()
        if not any(flags):
            return
        msgs = [None] * self.world_size
        info = None if exc is None else (type(exc).__name__, str(exc))
        dist.all_gather_object(msgs, info, group=self.process_group)
        if exc is not None:
            raise exc
        src = flags.index(1)
        kind, text = msgs[src]
        raise _exc_type(kind)(f"{what}: rank {src} failed, {why}: {text}")

    @staticmethod
    def bad_summary(values: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
        """[count, first bad value] as device tensors: no host sync until the shared all_gather."""
        if values.numel() == 0:
            return values.new_zeros(2, dtype=torch.int64)
        pos = torch.where(bad, torch.arange(len(bad), device=bad.device), len(bad)).min()
        first = values.to(torch.int64)[pos.clamp(max=len(bad) - 1)]
        return torch.stack([bad.sum(), first])

    def control(self, kind: str, epoch: int, counts=None, **fields) -> list[list[int]]:
        """All ranks' control rows (the one host sync of a call); raises on every rank, and the
        same error everywhere, if the ranks are not making the same call in the same epoch."""
        head = torch.zeros(_HEAD + self.world_size, dtype=torch.int64, device=self.device)
        head[_COL["kind"]] = 1 if kind == "update" else 2
        head[_COL["epoch"]] = epoch
        for name, value in fields.items():
            head[_COL[name]] = value
        if counts is not None:
            head[_HEAD:] = counts
        table = self.gather_rows(head).tolist()
        calls = [_KINDS[row[_COL["kind"]]] for row in table]
        if len(set(calls)) > 1:
            raise RuntimeError(
                f"{kind}: the ranks made different calls {calls}; every rank must call "
                "update() once per step and end_epoch() once per epoch"
            )
        epochs = [row[_COL["epoch"]] for row in table]
        if len(set(epochs)) > 1:
            raise RuntimeError(
                f"{kind}: the ranks are in different epochs {epochs}; every rank must call end_epoch() once per epoch"
            )
        return table


def agree_group(group, exc, what):
    """_agree for code that runs before a tracker exists (CPU tensors need a CPU-capable group)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    flag = torch.tensor([exc is not None], dtype=torch.int64, device=device)
    dist.all_reduce(flag, group=group)
    if not int(flag):
        return
    msgs = [None] * dist.get_world_size(group)
    dist.all_gather_object(msgs, None if exc is None else (type(exc).__name__, str(exc)), group=group)
    if exc is not None:
        raise exc
    src = next(i for i, m in enumerate(msgs) if m is not None)
    raise _exc_type(msgs[src][0])(f"{what}: rank {src} failed, so no rank went on: {msgs[src][1]}")
