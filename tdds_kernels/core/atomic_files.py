"""Replace a set of files all or none: the multi-file transaction under every file this package writes.

replace_files() writes each file to a temporary file beside it, fsyncs, then renames them all
into place; an error at any point leaves every previous file as it was. Users: tracker
checkpoints (core/checkpoint.py) and the offline scorer's outputs (offline.py).

Temporary files: a file is written as ".{name}.{pid}.{random}.tmp" beside it and renamed into
place. A writer killed mid-write (kill -9, OOM killer, power loss) leaves its temporary file
behind; the next write of the same path removes such leftovers (remove_stale_temps).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

# A temporary file is removed by a later write only when its writer is surely gone: the pid in
# its name is not a live process on this machine AND it has not been modified for this long.
# The pid test alone would do on one machine; the age guards a writer in another pid namespace
# or on another host sharing the filesystem (its pid means nothing here), whose file keeps a
# fresh mtime while it is being written.
STALE_TEMP_AGE_S = 60.0


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists, owned by someone else (or not a pid at all: keep it)
    return True


def remove_stale_temps(path) -> list[Path]:
    """Remove the temporary files a killed writer of `path` left beside it; returns them.

    Only names of our own pattern for this very path (".{name}.{pid}.{8 random}.tmp", and the
    pid-less ".{name}.{8 random}.tmp" of earlier versions) are candidates, and only when stale
    (STALE_TEMP_AGE_S): a concurrent writer's file is left alone."""
    path = Path(path)
    pattern = re.compile(r"\." + re.escape(path.name) + r"\.(?:(\d+)\.)?[A-Za-z0-9_]{8}\.tmp")
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in candidates:
        m = pattern.fullmatch(p.name)
        if m is None or (m.group(1) is not None and _pid_alive(int(m.group(1)))):
            continue
        try:
            if now - p.lstat().st_mtime < STALE_TEMP_AGE_S or not p.is_file() or p.is_symlink():
                continue
            p.unlink()
            removed.append(p)
        except OSError:  # gone meanwhile, or not ours to remove: a leftover is harmless
            pass
    return removed


def _new_temp(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`, opened for writing, with the permissions any new file
    gets here (0666 less the umask), as the file it replaces would have had; tempfile.mkstemp
    would make it 0600, and the rename would carry that to the output."""
    while True:
        tmp = os.path.join(path.parent, f"{_temp_prefix(path)}{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


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
            remove_stale_temps(path)
            fd, tmp = _new_temp(path)
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
    """A second name for `path`'s current file, named like the temporary files (so that
    remove_stale_temps also clears one that a killed process left)."""
    while True:
        backup = os.path.join(path.parent, f"{_temp_prefix(path)}{secrets.token_hex(4)}.tmp")
        try:
            os.link(path, backup, follow_symlinks=False)
            return backup
        except FileExistsError:
            continue
        except OSError:  # no hard links here (e.g. FAT, some network mounts): a copy instead
            fd, backup = _new_temp(path)
            os.close(fd)
            try:
                shutil.copy2(path, backup)
            except BaseException:
                os.unlink(backup)
                raise
            return backup
