"""Checkpoint files: the header, the format version, the one atomic writer, the reader.

A tracker checkpoint is a torch.save'd dict: {"format": FORMAT, "version": FORMAT_VERSION,
"config": TrackerConfig.to_dict(), ...TrackerState entries..., "on_nonfinite", "baselines"},
plus a "shard" entry for one rank's file of a sharded tracker. Files are read with
weights_only=True: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

FORMAT = "tdds_kernels.TDDSTracker"
FORMAT_VERSION = 1


def header() -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION}


def check_header(sd, where: str) -> None:
    """Raise unless `sd` is a tracker state dict of this format version; `where` names it."""
    if not isinstance(sd, dict) or sd.get("format") != FORMAT:
        got = sd.get("format") if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{where}: not a {FORMAT} checkpoint (format {got!r})")
    if sd.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: expected format version {FORMAT_VERSION}, got {sd.get('version')!r}")


def replace_files(writers: dict[Path, Callable]) -> None:
    """Write every file of `writers` ({path: fn(binary file object)}) to a temporary file beside
    it, fsync, then rename them all into place: a crash or an error leaves every previous file
    intact and no temporary file behind (a crash between two renames can mix the set's files)."""
    tmps = {}
    try:
        for path, write in writers.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            tmps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    for folder in {Path(p).parent for p in writers}:  # make the renames themselves durable
        try:
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


def save_atomic(obj, path) -> None:
    """torch.save `obj` to `path` atomically (replace_files)."""
    replace_files({Path(path): lambda f: torch.save(obj, f)})


def read(path, where: str | None = None) -> dict:
    """A checkpoint's dict, header checked; `where` (default: the path) names it in errors."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    check_header(sd, where or str(path))
    return sd
