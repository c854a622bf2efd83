"""What a sharded end_epoch decides from every rank's control row: the same table on every rank,
so the same decision and the same message on every rank (docs/distributed.md, "Errors").

Two kinds of errors, so that no epoch is ever wedged:

- errors an option covers (rows with an out-of-range index or label, rows with non-finite
  logits): as on a single tracker, with the option at "error" on any rank end_epoch raises and
  the epoch stays open; set the option to "skip" on every rank and call end_epoch() again;
- errors the sync-free exchange held from its updates (a host-side check that failed on some
  rank, targets= on some ranks only, a batch over the capacity, another logits dtype, a call
  mismatch): the rows at fault were dropped; end_epoch closes the epoch without them, then raises
  once, on every rank, saying what was wrong. The next end_epoch starts clean.
"""

from __future__ import annotations

from .collectives import COL

_TYPES = {"TypeError": TypeError, "ValueError": ValueError}


class Verdict:
    def __init__(self, table: list[list[int]], messages: list | None = None, capacity=None, wire=None):
        self.table, self.messages, self.capacity, self.wire = table, messages, capacity, wire

    def total(self, name: str) -> int:
        return sum(row[COL[name]] for row in self.table)

    def any(self, name: str) -> bool:
        return any(row[COL[name]] for row in self.table)

    def open_error(self, epoch: int, num_samples: int, num_classes: int) -> Exception | None:
        """The first error an option covers and says "error" to (on any rank); the epoch stays open."""
        bad_target = self.total("bad_target")  # counted in out_of_range too: the rows were dropped whole
        bad_index = self.total("out_of_range") - bad_target
        retry = "and call end_epoch() again"
        if self.any("out_of_range_error") and bad_index:
            return ValueError(
                f"index: {bad_index} rows of epoch {epoch} had dataset indices outside [0, {num_samples}) "
                f"and were skipped; the epoch is not closed (set tracker.on_out_of_range = 'skip' on every "
                f"rank to accept that {retry})"
            )
        if self.any("out_of_range_error") and bad_target:
            return ValueError(
                f"targets: {bad_target} rows of epoch {epoch} had class labels outside [0, {num_classes}) "
                f"and were skipped; the epoch is not closed (set tracker.on_out_of_range = 'skip' on every "
                f"rank to accept that {retry})"
            )
        if self.any("nonfinite_error") and self.total("nonfinite"):
            return ValueError(
                f"logits: {self.total('nonfinite')} rows of epoch {epoch} (all ranks) had non-finite "
                "values and were ignored; the epoch is not closed (set tracker.on_nonfinite = 'skip' "
                f"on every rank to accept that {retry})"
            )
        return None

    def held_errors(self, epoch: int) -> list[tuple[type, str]]:
        """The errors the sync-free updates of this epoch held, in a fixed order (the same list on
        every rank): (exception type, one-line text)."""
        out = []
        for r, msg in enumerate(self.messages or ()):
            if msg is not None:
                out.append((_TYPES.get(msg[0], RuntimeError), f"update: rank {r}: {msg[1]}"))
        if self.total("call_mismatch"):
            out.append(
                (
                    RuntimeError,
                    f"update: in epoch {epoch} some ranks called update() while others called end_epoch() or "
                    "were in another epoch; every rank must call update() once per step and end_epoch() once per epoch",
                )
            )
        if self.total("targets_mismatch"):
            out.append(
                (
                    ValueError,
                    f"targets: in epoch {epoch} they were passed on some ranks but not on the others; "
                    "pass them on every rank or on none",
                )
            )
        for r, row in enumerate(self.table):
            if row[COL["overflow"]]:
                out.append(
                    (
                        ValueError,
                        f"logits: rank {r} passed a batch of {row[COL['overflow_max']]} rows in epoch {epoch}, "
                        f"more than the {self.capacity} rows per rank the sync-free exchange carries (the first "
                        f"batch's size unless max_batch_size is given); its {row[COL['overflow']]} rows were "
                        "skipped: pass max_batch_size= to the tracker",
                    )
                )
            if row[COL["wrong_dtype"]]:
                out.append(
                    (
                        TypeError,
                        f"logits: rank {r} passed {row[COL['wrong_dtype']]} rows in epoch {epoch} in another "
                        f"dtype than the first update's {self.wire}, which the sync-free exchange carries; they "
                        "were skipped: keep one logits dtype, or pass float32 logits",
                    )
                )
        return out

    def closing_error(self, epoch: int) -> Exception | None:
        """One exception for what the updates of the epoch just closed held, or None."""
        held = self.held_errors(epoch)
        if not held:
            return None
        kind, text = held[0]
        more = f" (and {len(held) - 1} more: {'; '.join(t for _, t in held[1:])})" if len(held) > 1 else ""
        return kind(f"{text}{more}; epoch {epoch} was closed without the rows at fault (end_epoch reports this once)")
