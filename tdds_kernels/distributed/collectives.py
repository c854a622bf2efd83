"""The collectives of a sharded tracker: gathers in rank order, "raise on every rank" (agree), and
the control row every rank contributes once per update/end_epoch call. Failures on one rank raise
on every rank, so no rank is left waiting in a collective."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

# How long a collective read (scores, stats, save, ...) waits for every rank before it raises
# instead of hanging until the process group's timeout (30 min by default). Ranks that are only
# slower, by more than this, need a larger value.
COLLECTIVE_CHECK_S = 10.0

# The control row: one layout, named, for both exchanges. The eager exchange gathers it (then the
# rows this rank sends to each rank) once per update and end_epoch; the sync-free exchange sends it
# as the head of its fixed-size block. Unused fields are 0.
FIELDS = (
    "kind",  # UPDATE or END_EPOCH: the call this rank is making
    "epoch",
    "status",  # 1: a host-side check failed on this rank (its message travels as an object)
    "has_targets",
    "dtype",  # the logits' index in LOGIT_DTYPES, -1 for no rows
    "bad_index",  # eager: rows of this batch with an index outside [0, N), and the first of them
    "first_index",
    "bad_target",  # rows with a label outside [0, C): eager, this batch; sync-free, the epoch's
    "first_target",
    "out_of_range",  # end_epoch: this rank's counters for the open epoch, and its options
    "nonfinite",
    "nonfinite_error",  # on_nonfinite == "error"
    "out_of_range_error",  # on_out_of_range == "error"
    "overflow",  # sync-free, held until end_epoch: rows over the capacity, the largest such batch,
    "overflow_max",
    "wrong_dtype",  # rows in a dtype the wire cannot carry, rows of blocks from another call/epoch,
    "call_mismatch",
    "targets_mismatch",  # and blocks whose targets= differed from this rank's
)
COL = {name: i for i, name in enumerate(FIELDS)}
WORDS = len(FIELDS)  # int64 words; the eager update's per-destination row counts follow
UPDATE, END_EPOCH = 1, 2
CALLS = {UPDATE: "update", END_EPOCH: "end_epoch"}


def _exc_type(name: str):
    return {"TypeError": TypeError, "ValueError": ValueError}.get(name, RuntimeError)


def agree(process_group, exc: BaseException | None, what: str, why: str = "so no rank went on", device="cpu"):
    """Raise on every rank if `exc` is set on any (collective): the failing rank its own error, the
    rest the same type and text naming the first failing rank. The one implementation of "raise on
    every rank"; `device`: where the flag lives (NCCL needs the rank's GPU)."""
    flag = torch.tensor([exc is not None], dtype=torch.int64, device=device)
    flags = [torch.empty_like(flag) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(flags, flag, group=process_group)
    flags = [int(f) for f in torch.cat(flags).tolist()]
    if not any(flags):
        return
    msgs = gather_messages(process_group, exc)
    if exc is not None:
        raise exc
    src = flags.index(1)
    kind, text = msgs[src]
    raise _exc_type(kind)(f"{what}: rank {src} failed, {why}: {text}")


def gather_messages(process_group, exc: BaseException | None) -> list:
    """Every rank's (type name, text) of `exc`, None where unset (collective)."""
    msgs = [None] * dist.get_world_size(process_group)
    dist.all_gather_object(msgs, None if exc is None else (type(exc).__name__, str(exc)), group=process_group)
    return msgs


def group_device(process_group) -> torch.device:
    """Where a group's collective tensors live before a tracker exists: NCCL needs the GPU."""
    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_group(process_group, exc, what):
    """agree() for code that runs before a tracker exists."""
    agree(process_group, exc, what, device=group_device(process_group))


def check_calls(kinds, epochs) -> None:
    """Raise (the same on every rank that sees the table) unless every rank makes the same call in
    the same epoch."""
    calls = [CALLS.get(k, "?") for k in kinds]
    if len(set(calls)) > 1:
        raise RuntimeError(
            f"the ranks made different calls {calls}; every rank must call "
            "update() once per step and end_epoch() once per epoch"
        )
    if len(set(epochs)) > 1:
        raise RuntimeError(
            f"the ranks are in different epochs {epochs}; every rank must call end_epoch() once per epoch"
        )


class Group:
    """A process group seen from one rank, with the tracker's device for collective tensors."""

    def __init__(self, process_group, device: torch.device):
        self.process_group = process_group
        self.device = device
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)

    def every_rank_here(self, what: str) -> None:
        """Raise within COLLECTIVE_CHECK_S seconds, instead of hanging, when `what` (a collective)
        is called on some ranks only, as under `if rank == 0:`. gloo groups: a monitored barrier
        names the ranks that did not come; other backends wait for their own timeout."""
        if dist.get_backend(self.process_group) != "gloo":
            return
        try:
            dist.monitored_barrier(
                group=self.process_group, timeout=datetime.timedelta(seconds=COLLECTIVE_CHECK_S), wait_all_ranks=True
            )
        except RuntimeError as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(
                f"{what}: a collective of the sharded tracker, but not every rank called it within "
                f"{COLLECTIVE_CHECK_S:g} s ({detail}); call it on every rank, not under `if rank == 0:`"
            ) from None

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
        """agree() on this group, with the flag on the tracker's device."""
        agree(self.process_group, exc, what, why, self.device)

    @staticmethod
    def bad_summary(values: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
        """[count, first bad value] as device tensors: no host sync until the shared all_gather."""
        if values.numel() == 0:
            return values.new_zeros(2, dtype=torch.int64)
        pos = torch.where(bad, torch.arange(len(bad), device=bad.device), len(bad)).min()
        first = values.to(torch.int64)[pos.clamp(max=len(bad) - 1)]
        return torch.stack([bad.sum(), first])

    def control(self, kind: int, epoch: int, counts=None, **fields) -> list[list[int]]:
        """All ranks' control rows (the one host sync of a call); raises on every rank, and the
        same error everywhere, if the ranks are not making the same call in the same epoch."""
        # One size for every call (per-destination counts or zeros), so ranks in different calls
        # still pair in the all_gather and all of them see the mismatch.
        head = torch.zeros(WORDS + self.world_size, dtype=torch.int64, device=self.device)
        head[COL["kind"]] = kind
        head[COL["epoch"]] = epoch
        for name, value in fields.items():
            head[COL[name]] = value
        if counts is not None:
            head[WORDS:] = counts
        table = self.gather_rows(head).tolist()
        check_calls([row[COL["kind"]] for row in table], [row[COL["epoch"]] for row in table])
        return table
