"""Host copies of a small device tensor (the tracker's counters), read without a host sync.

The tracker's forgotten-end_epoch heuristic needs the duplicate count once per N rows. Reading
a CUDA tensor with int() waits for every kernel queued before it, which stalls a training loop
that otherwise never waits for the GPU. Here each read starts a non-blocking copy into pinned
host memory and records a CUDA event after it; a later read returns that copy only once the
event says it has landed (event.query() does not wait). On CPU the copy is immediate.

So on CUDA the heuristic sees the counters one check late (N rows later), never stalls, and
skips a check while the previous copy is still in flight.

Nothing here runs while the current stream is capturing a CUDA graph (stream_capturing): an
event query there is an error that invalidates the capture, and a copy and event recorded into
the graph would re-run on every replay. The caller skips its check and runs it at the next call
outside the capture.
"""

from __future__ import annotations

import torch


def stream_capturing(device: torch.device) -> bool:
    """Whether `device` is a CUDA device whose current stream is capturing a CUDA graph. The
    tracker's host-side diagnostics stay out of a capture; its tests replace this function to
    run that path on CPU."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class HostSnapshots:
    """Labelled host snapshots of one device tensor, taken and read without waiting for it."""

    def __init__(self):
        self._pending = None  # (label, host tensor, event): a CUDA copy that may not have landed

    def take(self, values: torch.Tensor, label):
        """Start a host copy of `values` tagged `label`; return (label, host tensor) of the newest
        copy that has landed and was not returned before, or None.

        On CPU that is this very copy. On CUDA it is the copy started by an earlier take(),
        if its event has completed; while it is still in flight no new copy is started (the
        labels then stay in order and at most one copy is ever outstanding). While the stream
        is capturing a graph nothing is queried or started and the answer is None.
        """
        if stream_capturing(values.device):
            return None
        if values.device.type != "cuda":
            return label, values.detach().to("cpu", copy=True)
        ready = None
        if self._pending is not None:
            if not self._pending[2].query():
                return None
            ready = self._pending[:2]
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values.detach(), non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(values.device))  # after the copy it guards
        self._pending = (label, host, event)
        return ready

    def clear(self) -> None:
        """Forget a copy in flight (e.g. after the state it reflects was replaced)."""
        self._pending = None
