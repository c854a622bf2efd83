"""Checkpoint files: the header, the format version, the one atomic writer, the reader.

A tracker checkpoint is a torch.save'd dict: {"format": FORMAT, "version": FORMAT_VERSION,
"config": TrackerConfig.to_dict(), ...TrackerState entries..., "on_nonfinite", "baselines"},
plus a "shard" entry for one rank's file of a sharded tracker, and (written by save_atomic
since the checksums were added; version 1 files without them still load) a "checksums" entry:
{tensor name: crc32 of its bytes, "__meta__": crc32 of every other entry's repr}. Files are
read with weights_only=True: a checkpoint is data, never code. Everything read from disk is
treated as untrusted input: an unreadable file, a checksum mismatch or a state that does not fit
its own config is a one-line ValueError naming the file.

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
import warnings
import zlib
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


def save_atomic(obj, path) -> None:
    """torch.save `obj` to `path` atomically (replace_files); a tracker state dict (one with
    this module's header) gets its "checksums" entry added on the way."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = {**obj, CHECKSUMS: checksums(obj)}
    try:
        replace_files({Path(path): lambda f: torch.save(obj, f)})
    except OSError as exc:  # a full disk, a read-only folder: the file named, the old one intact
        raise OSError(
            exc.errno, f"{path}: cannot write the checkpoint ({exc.strerror or exc}); any previous file is unchanged"
        ) from None
    except RuntimeError as exc:  # torch's zip writer reports a failed write as RuntimeError
        if "write" not in str(exc).lower():
            raise
        raise OSError(
            f"{path}: cannot write the checkpoint (is the disk full?); any previous file is unchanged"
        ) from None


# ---------------------------------------------------------------------------- checksums
CHECKSUMS = "checksums"
META = "__meta__"


def tensor_crc(t: torch.Tensor) -> int:
    """crc32 of a tensor's bytes in C order (any dtype: bfloat16 has no numpy dtype, so the bytes
    are read through a uint8 view, never through numpy's dtype)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return zlib.crc32(memoryview(t.view(torch.uint8).numpy()))


def _tensors(sd: dict, prefix: str = ""):
    for key, value in sd.items():
        if isinstance(value, torch.Tensor):
            yield prefix + key, value
        elif isinstance(value, dict):
            yield from _tensors(value, f"{prefix}{key}/")


def _meta_crc(sd: dict) -> int:
    # Everything but the tensors' data (config, epoch, flags...), in a canonical text form:
    # tensors appear as their dtype and shape, dict keys sorted.
    def canon(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k!r}: {canon(v[k])}" for k in sorted(v, key=str) if k != CHECKSUMS) + "}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(canon(x) for x in v) + "]"
        if isinstance(v, torch.Tensor):
            return f"tensor({v.dtype}, {tuple(v.shape)})"
        return repr(v)

    return zlib.crc32(canon(sd).encode())


def checksums(sd: dict) -> dict[str, int]:
    """{tensor name ("prev", "baselines/el2n"): crc32, META: crc32 of the rest} of a state dict."""
    out = {name: tensor_crc(t) for name, t in _tensors(sd)}
    out[META] = _meta_crc(sd)
    return out


def verify_checksums(sd: dict, where: str) -> None:
    """Raise (naming `where` and the tensor) unless `sd` matches its stored checksums; a dict
    without them (written before they existed) passes."""
    stored = sd.get(CHECKSUMS)
    if stored is None:
        return
    if not isinstance(stored, dict):
        raise ValueError(f"{where}: {CHECKSUMS}: expected a dict, got {type(stored).__name__}")
    names = {name for name, _ in _tensors(sd)}
    if names != set(stored) - {META}:
        raise ValueError(
            f"{where}: the tensors {sorted(names ^ (set(stored) - {META}))} are not covered by the "
            "stored checksums: the file is corrupt or was edited"
        )
    for name, t in _tensors(sd):
        got = tensor_crc(t)
        if got != stored[name]:
            raise ValueError(
                f"{where}: tensor {name!r} fails its checksum (stored {stored[name]!r}, computed "
                f"{got}): the file is corrupt"
            )
    if _meta_crc(sd) != stored.get(META):
        raise ValueError(
            f"{where}: the non-tensor entries (config, epoch, ...) fail their checksum: the file is corrupt"
        )


def _reason(exc: Exception) -> str:
    # One short clause from torch's multi-line messages: for a pickle that weights_only refused,
    # what it refused (never torch's advice to load it unsafely); else the first sentence.
    text = str(exc).strip()
    if isinstance(exc, (KeyError, IndexError)):  # the unpickler's internals on bytes that are no pickle
        return "its bytes are neither a torch.save archive nor a pickle"
    if text.startswith("Weights only load failed"):
        m = re.search(r"WeightsUnpickler error:[ \t]*(\S[^\n]*)", text)
        details = [m.group(1)] if m else []
        details += [
            line.strip()
            for line in text.splitlines()[1:]
            if line.strip() and not line.startswith(("Check the documentation", "Please file", "WeightsUnpickler"))
        ]
        first = "weights_only refused it" + (f": {details[0]}" if details else "")
    else:
        first = (text.splitlines() or [""])[0].split(". ")[0].strip()
    first = first[:200]
    return f"{type(exc).__name__}: {first}" if first and first != type(exc).__name__ else type(exc).__name__


def read(path, where: str | None = None) -> dict:
    """A checkpoint's dict, header and checksums checked; `where` (default: the path) names it
    in errors. Anything torch.load cannot read (random bytes, a truncated or empty file, a zip
    of garbage, a pickle that would run code: weights_only=True refuses it without running it)
    is a one-line ValueError; a missing file stays FileNotFoundError."""
    where = where or str(path)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise next to the error
            warnings.simplefilter("ignore", UserWarning)
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # torch raises a zoo here: UnpicklingError, RuntimeError, EOFError, OSError...
        raise ValueError(f"{where}: not a readable {FORMAT} checkpoint ({_reason(exc)})") from None
    check_header(sd, where)
    verify_checksums(sd, where)
    return sd
