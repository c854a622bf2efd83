"""The tracker's checkpoint file format: the header, the format version, the checksums, the reader.

A tracker checkpoint is a torch.save'd dict: {"format": FORMAT, "version": FORMAT_VERSION,
"config": TrackerConfig.to_dict(), ...TrackerState entries..., "on_nonfinite", "baselines"},
plus a "shard" entry for one rank's file of a sharded tracker, and a "checksums" entry (written
by save_atomic; files written before checksums existed load unverified): {tensor name: crc32
of its bytes, "__meta__": crc32 of every other entry's repr}. Files are written atomically
(core/atomic_files.py) and read with weights_only=True: a checkpoint is data, never code.
Everything read from disk is treated as untrusted input: an unreadable file, a tensor the file
does not hold in full, a checksum mismatch or a state that does not fit its own config is a
one-line ValueError naming the file.

Versions: 2 (current) dropped the forgotten-end_epoch() check's bookkeeping ("next_dup_check",
"dup_check_mark"), which is host-side diagnostics, not state; version 1 files carry it and
still load (the entries are ignored).
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from .atomic_files import replace_files
from .baselines import BaselineScores
from .config import TrackerConfig
from .inputs import check_options
from .state import RECORDING, TrackerState, initial_values

FORMAT = "tdds_kernels.TDDSTracker"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def header() -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION}


def check_header(sd, where: str) -> None:
    """Raise unless `sd` is a tracker state dict of a readable format version; `where` names it."""
    if not isinstance(sd, dict) or sd.get("format") != FORMAT:
        got = sd.get("format") if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{where}: not a {FORMAT} checkpoint (format {got!r})")
    version = sd.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # type: True == 1
        raise ValueError(
            f"{where}: expected format version {' or '.join(map(str, READABLE_VERSIONS))}, got {version!r}"
        )


def save_atomic(obj, path) -> None:
    """torch.save `obj` to `path` atomically (atomic_files.replace_files); a tracker state dict
    (one with this module's header) gets its "checksums" entry added on the way."""
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


def _all_tensors(obj, prefix: str = ""):
    # Every tensor anywhere in a loaded object (dict values, list and tuple items), by path.
    if isinstance(obj, torch.Tensor):
        yield prefix.rstrip("/"), obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _all_tensors(value, f"{prefix}{key}/")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _all_tensors(value, f"{prefix}{i}/")


def _check_archive(path, where: str) -> int:
    """The file's size, after checking it is a zip archive of uncompressed records (what
    torch.save writes) that the file holds in full. A compressed record could inflate to any
    size, and a record size the directory claims beyond the file would be allocated before
    the read fails; the older non-zip torch format sizes its storages from the pickle alone."""
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as zf:
            records = zf.infolist()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        reason = "not a zip archive, which torch.save writes" if isinstance(exc, zipfile.BadZipFile) else _reason(exc)
        raise ValueError(f"{where}: not a readable {FORMAT} checkpoint ({reason})") from None
    for r in records:
        if r.compress_type != zipfile.ZIP_STORED or r.compress_size != r.file_size:
            raise ValueError(
                f"{where}: not a readable {FORMAT} checkpoint (record {r.filename!r} is compressed; "
                "torch.save stores every record as it is)"
            )
    held = sum(r.file_size for r in records)
    if held > size:
        raise ValueError(
            f"{where}: not a readable {FORMAT} checkpoint (its records claim {held} bytes, the file has {size})"
        )
    return size


def _check_tensors_stored(sd, size: int, where: str) -> None:
    """Raise unless every tensor of `sd` (loaded on the meta device: shapes, strides and the
    storage sizes the file claims, no data) has all its elements stored, and all of them fit in
    the file's `size` bytes. torch.save keeps a view's shape and strides beside its storage, so
    a file of a few KB can describe a tensor of any size: a stride-0 (expanded) view of one
    element. Loading it would make the tracker allocate and fill the state those shapes ask for.
    (torch.load itself refuses a storage larger than its record, and _check_archive bounds the
    records by the file.)"""
    total = 0
    for name, t in _all_tensors(sd):
        need = t.numel() * t.element_size()
        held = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
        if need > held:
            raise ValueError(
                f"{where}: tensor {name!r} of shape {tuple(t.shape)} {t.dtype} needs {need} bytes but "
                f"the file stores {max(held, 0)} for it (an expanded or crafted view): the file is corrupt or crafted"
            )
        total += need
    if total > size:
        raise ValueError(
            f"{where}: its tensors need {total} bytes, more than the file's {size}: the file is corrupt or crafted"
        )


def _torch_load(path, where: str, map_location: str):
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise next to the error
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # torch raises a zoo here: UnpicklingError, RuntimeError, EOFError, OSError...
        raise ValueError(f"{where}: not a readable {FORMAT} checkpoint ({_reason(exc)})") from None


def read(path, where: str | None = None) -> dict:
    """A checkpoint's dict, header, stored sizes and checksums checked; `where` (default: the
    path) names it in errors. Nothing is read into memory before the file is known to hold
    every tensor it describes (_check_archive, then the structure on the meta device), so the
    memory a load takes is bounded by the file's size. Anything torch.load cannot read (random
    bytes, a truncated or empty file, a zip of garbage, a pickle that would run code:
    weights_only=True refuses it without running it) is a one-line ValueError; a missing file
    stays FileNotFoundError."""
    where = where or str(path)
    size = _check_archive(path, where)
    structure = _torch_load(path, where, "meta")
    check_header(structure, where)
    _check_tensors_stored(structure, size, where)
    sd = _torch_load(path, where, "cpu")
    check_header(sd, where)
    verify_checksums(sd, where)
    return sd


def check_state_dict(config: TrackerConfig, sd, where: str = "state_dict") -> tuple[str, str]:
    """Validate a whole tracker state dict against `config` (header, config, every tensor and
    scalar, the options, the baselines) without changing or allocating anything N-sized; returns
    (on_nonfinite, on_out_of_range). A one-line ValueError naming the entry otherwise."""
    if isinstance(sd, dict) and sd.get("shard") is not None:
        raise ValueError(
            f"{where}: this is one shard of a sharded tracker; load it with "
            "process_group=..., or merge the shards (tdds_kernels.distributed.merge_shards)"
        )
    check_header(sd, where)
    if not isinstance(sd.get("config"), dict):
        raise ValueError(f"{where}: config: expected a dict, got {type(sd.get('config')).__name__}")
    diffs = config.mismatches(sd["config"])
    if diffs:
        raise ValueError(f"{where}: config mismatch: " + "; ".join(diffs))
    TrackerState.check_dict(config, sd, where)
    options = check_options(sd, where)
    if "baselines" not in sd:
        raise ValueError(f"{where}: missing entry 'baselines' (None when no targets were passed)")
    if sd["baselines"] is not None:
        BaselineScores(config.num_samples, config.num_classes, "meta").check_state_dict(sd["baselines"])
    return options


def final_state(sd: dict, where: str = "final") -> dict:
    """A complete tracker's state dict without the recording state (a few bytes per sample):
    what save(path, final=True) writes. Scores, stats, config and baselines stay."""
    if not sd.get("complete"):
        raise ValueError(
            f"{where}: expected a complete tracker (its trajectory_len epochs ended), got epoch "
            f"{sd.get('epoch')}; only a complete tracker's state can drop its recording state"
        )
    out = {k: v for k, v in sd.items() if k not in RECORDING}
    out["final"] = True
    return out


def expand_final_state(sd: dict) -> dict:
    """A loadable state dict from final_state(): the recording state refilled with its initial
    values (unused by a complete tracker) as broadcast views, so loading allocates no N x C
    temporary; any other state dict is returned as it is."""
    if not isinstance(sd, dict) or not sd.get("final"):
        return sd
    fresh = initial_values(TrackerConfig.from_dict(sd["config"]))
    out = {k: v for k, v in sd.items() if k != "final"}
    out.update({name: fresh[name] for name in RECORDING if name in fresh})
    return out
