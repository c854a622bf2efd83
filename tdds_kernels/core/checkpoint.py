"""Checkpoint files: the header, the format version, the one atomic writer, the reader.

A tracker checkpoint is a torch.save'd dict: {"format": FORMAT, "version": FORMAT_VERSION,
"config": TrackerConfig.to_dict(), ...TrackerState entries..., "on_nonfinite", "baselines"},
plus a "shard" entry for one rank's file of a sharded tracker. Files are read with
weights_only=True: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
import secrets
import shutil
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
    it, fsync, then rename them all into place (_swap_in), as a set: an error at any point (a
    failing writer, a full disk, a failing rename) leaves every previous file as it was, or
    absent if it was absent, and no temporary file behind. Each file is whole after a crash too;
    only a process killed between two of the renames can leave a mix of old and new files."""
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
        _swap_in(tmps)
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


def _swap_in(tmps: dict[Path, str]) -> None:
    """os.replace each temporary file onto its path, all or none. Every existing path is first
    hard-linked (copied where the filesystem has no hard links) to a hidden backup beside it; on
    an error the paths already replaced get their backups back (or are removed, if they did not
    exist), by renames alone, which need no free space. The backups are then removed."""
    backups, done = {}, []
    try:
        for path in tmps:
            if os.path.lexists(path):
                backups[path] = _backup(path)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
            done.append(path)
    except BaseException:
        for path in reversed(done):
            if path in backups:
                os.replace(backups.pop(path), path)
            else:
                os.unlink(path)
        raise
    finally:
        for backup in backups.values():
            if os.path.lexists(backup):
                os.unlink(backup)


def _backup(path: Path) -> str:
    """A second name for `path`'s current file, named like the temporary files (".NAME.*.tmp")."""
    while True:
        backup = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.link(path, backup, follow_symlinks=False)
            return backup
        except FileExistsError:
            continue
        except OSError:  # no hard links here (e.g. FAT, some network mounts): a copy instead
            fd, backup = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            try:
                shutil.copy2(path, backup)
            except BaseException:
                os.unlink(backup)
                raise
            return backup


def save_atomic(obj, path) -> None:
    """torch.save `obj` to `path` atomically (replace_files)."""
    replace_files({Path(path): lambda f: torch.save(obj, f)})


def read(path, where: str | None = None) -> dict:
    """A checkpoint's dict, header checked; `where` (default: the path) names it in errors."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    check_header(sd, where or str(path))
    return sd
