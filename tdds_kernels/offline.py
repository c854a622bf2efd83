"""Offline scoring of dump folders in the release's format, streamed through the tracker.

A folder holds, per epoch t, `{t}_Output.npy` (N_t, C) logits in loader order and
`{t}_Index.npy` (N_t,) dataset indices; epochs K..K+T−1 are scored (K = first_epoch, 0 by
default). The release loads all T epochs at once; here each epoch is read and fed in blocks, so
peak memory is O(N·C) whatever T is. Every file is checked (header, size, dtype, shape, index
range) before the tracker is allocated, and N is not taken from an index far above the rows
present. Outputs, as the release names and orders them: `data_mask_win{W}_ep{T}.npy`
(ascending argsort of the scores) and `score_win{W}_ep{T}.npy` (the scores in that order), plus
`scores.npy` by dataset index, replaced as a set (write_arrays).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .core.atomic_files import replace_files
from .core.config import TrackerConfig, check_int
from .core.selection import ascending_order
from .core.state import tensor_specs
from .core.tracker import TDDSTracker

ROWS_PER_BATCH_ELEMENTS = 1 << 18  # ~1 MB of float32 logits per update call: small temporaries


class DumpError(Exception):
    """A dump folder that cannot be scored: names the file and what is wrong with it."""


@dataclass
class EpochFiles:
    epoch: int
    output: Path
    index: Path
    rows: int


def output_names(window: int, trajectory_len: int) -> tuple[str, str]:
    return f"data_mask_win{window}_ep{trajectory_len}.npy", f"score_win{window}_ep{trajectory_len}.npy"


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
# An implied N (max index + 1) above both of these is taken for a corrupt or mistaken index
# rather than a dataset: release dumps hold every sample once per epoch, so N is about the
# rows of an epoch, and a state sized by a stray 10**12 would exhaust memory. --num-samples
# overrides it.
IMPLIED_N_ROWS_FACTOR, IMPLIED_N_FLOOR = 4, 1 << 16


def _npy_header(path: Path, what: str):
    """(shape, dtype) of the .npy file at `path`, after checking it is one and is not truncated.

    Reads only the header: an .npz, a pickle or a cut-off file is named as such before numpy
    maps it (np.load would raise AttributeError, a pickle hint or an mmap error)."""
    if not path.is_file():
        raise DumpError(f"{path}: missing {what} file" if not path.exists() else f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic != NPY_MAGIC:
                if magic.startswith(ZIP_MAGIC):
                    got = "an .npz (zip) archive"
                elif magic[:1] == b"\x80":
                    got = "a Python pickle (never loaded)"
                else:
                    got = "an empty file" if not magic else "no .npy header"
                raise DumpError(f"{path}: not a readable .npy file: expected a .npy array of {what}, got {got}")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            data_start = f.tell()
    except DumpError:
        raise
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TokenError...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DumpError(f"{path}: not a readable .npy file ({reason})") from None
    if dtype.hasobject:
        raise DumpError(f"{path}: expected a numeric array of {what}, got Python objects (dtype {dtype}; never loaded)")
    if fortran and len(shape) > 1:
        raise DumpError(f"{path}: expected a C-ordered array, got a Fortran-ordered one (np.ascontiguousarray it)")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size - data_start
    if have < need:
        raise DumpError(f"{path}: truncated: its header says {shape} {dtype} ({need} bytes), the file holds {have}")
    return shape, dtype


def _epochs_present(dump_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[0]) for p in dump_dir.glob("*_Output.npy") if p.name.split("_")[0].isdigit())


def _missing(path: Path, what: str, dump_dir: Path, first: int, trajectory_len: int) -> DumpError:
    """The error for a missing epoch file: which epochs are needed, which are there, and the
    --first-epoch that would fit them."""
    present = _epochs_present(dump_dir)
    found = "no {t}_Output.npy at all" if not present else f"epochs {present[0]}..{present[-1]} ({len(present)} files)"
    gaps = sorted(set(range(first, first + trajectory_len)) - set(present))
    if present and gaps:  # name the epochs whose logits are absent, not just the span found
        shown = ", ".join(f"{t}_Output.npy" for t in gaps[:5]) + (f" and {len(gaps) - 5} more" if len(gaps) > 5 else "")
        found += f"; no {shown}"
    hint = ""
    if present and present[0] != first and set(range(present[0], present[0] + trajectory_len)) <= set(present):
        hint = f"; pass --first-epoch {present[0]}"
    return DumpError(
        f"{path}: missing {what} file (epochs {first}..{first + trajectory_len - 1} are read; found {found}{hint})"
    )


def scan(dump_dir, trajectory_len: int, num_samples: int | None = None, first_epoch: int = 0):
    """Check epochs first_epoch..first_epoch+T−1 exist and fit together; returns (files, N, C).

    Reads the headers of the logit files and the (small) index files. N is `num_samples`, or
    the largest index + 1, refused when far above the rows present (IMPLIED_N_*).
    """
    dump_dir = Path(dump_dir)
    if not dump_dir.is_dir():
        raise DumpError(f"{dump_dir}: not a directory")
    files, num_classes, max_index, max_index_file = [], None, -1, None
    for t in range(first_epoch, first_epoch + trajectory_len):
        out_path, idx_path = dump_dir / f"{t}_Output.npy", dump_dir / f"{t}_Index.npy"
        for path, what in ((out_path, "logits"), (idx_path, "index")):
            if not path.exists():
                raise _missing(path, what, dump_dir, first_epoch, trajectory_len)
        out_shape, out_dtype = _npy_header(out_path, "logits")
        idx_shape, idx_dtype = _npy_header(idx_path, "index")
        if len(out_shape) != 2 or out_dtype.kind != "f":
            raise DumpError(
                f"{out_path}: expected a 2-D float array (rows, classes), got {len(out_shape)}-D {out_dtype}"
            )
        if out_shape[1] < 1:
            raise DumpError(f"{out_path}: expected at least one class column, got shape {out_shape}")
        if len(idx_shape) != 1 or idx_dtype.kind not in "iu":
            raise DumpError(f"{idx_path}: expected a 1-D integer array, got {len(idx_shape)}-D {idx_dtype}")
        if idx_shape[0] != out_shape[0]:
            raise DumpError(f"{idx_path}: {idx_shape[0]} indices for {out_shape[0]} rows of {out_path.name}")
        if num_classes is None:
            num_classes = out_shape[1]
        elif out_shape[1] != num_classes:
            raise DumpError(f"{out_path}: {out_shape[1]} classes, but epoch {first_epoch} has {num_classes}")
        if idx_shape[0]:
            idx = np.load(idx_path, mmap_mode="r", allow_pickle=False)
            lo, hi = int(idx.min()), int(idx.max())
            del idx
            if lo < 0:
                raise DumpError(f"{idx_path}: negative dataset index {lo}")
            if num_samples is not None and hi >= num_samples:
                raise DumpError(f"{idx_path}: dataset index {hi} out of range for --num-samples {num_samples}")
            if hi > max_index:
                max_index, max_index_file = hi, idx_path
        files.append(EpochFiles(t, out_path, idx_path, int(out_shape[0])))
    if num_samples is not None:
        return files, num_samples, num_classes
    n, rows = max_index + 1, max(f.rows for f in files)
    if n <= 0:
        raise DumpError(f"{dump_dir}: no samples in epochs {first_epoch}..{first_epoch + trajectory_len - 1}")
    if n > max(IMPLIED_N_ROWS_FACTOR * rows, IMPLIED_N_FLOOR):
        raise DumpError(
            f"{max_index_file}: dataset index {max_index} implies {n} samples, far more than the {rows} rows "
            f"of the largest epoch (more than {IMPLIED_N_ROWS_FACTOR}x, and over {IMPLIED_N_FLOOR}); pass "
            "--num-samples N if the dataset really has that many"
        )
    return files, n, num_classes


def _read_rows(path: Path, rows: int):
    """Yield consecutive row blocks of a 2-D/1-D .npy file as fresh arrays.

    Plain reads into a reused buffer rather than a memory map: mapped pages would count toward
    the process's resident memory for the whole epoch.
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran and len(shape) > 1:
            raise DumpError(f"{path}: Fortran-ordered arrays are not supported")
        row_items = int(np.prod(shape[1:], dtype=np.int64))
        buf = np.empty((min(rows, shape[0]),) + tuple(shape[1:]), dtype=dtype)
        for start in range(0, shape[0], rows):
            block = buf[: min(rows, shape[0] - start)]
            got = f.readinto(memoryview(block.reshape(-1)).cast("B"))
            if got != block.size * dtype.itemsize:
                raise DumpError(
                    f"{path}: truncated file ({start + got // max(1, row_items * dtype.itemsize)}"
                    f" of {shape[0]} rows readable)"
                )
            yield block if block.dtype.isnative else block.astype(block.dtype.newbyteorder("="))


def state_bytes(num_samples: int, num_classes: int, window: int) -> int:
    """Bytes of a float32 tracker state for N samples of C classes (core.state.TENSORS)."""
    config = TrackerConfig(num_samples, num_classes, window=window, trajectory_len=None)
    return sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in tensor_specs(config).values())


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX: the allocator's error decides
        return None


def score_dump(
    dump_dir,
    trajectory_len: int,
    window: int,
    decay: float,
    num_samples=None,
    backend: str = "auto",
    on_nonfinite: str = "error",
    progress: bool = False,
    first_epoch: int = 0,
):
    """Score epochs first_epoch..first_epoch+trajectory_len−1 of a dump folder; returns
    (scores float32 (N,), tracker.stats)."""
    if num_samples is not None:
        num_samples = check_int("num_samples", num_samples, 1)
    first_epoch = check_int("first_epoch", first_epoch, 0)
    files, n, c = scan(dump_dir, trajectory_len, num_samples, first_epoch)
    need, have = state_bytes(n, c, window), _physical_memory()
    if have is not None and need > have:  # refused before the allocator can overcommit it
        raise DumpError(
            f"--num-samples {n}: the tracker state for {n} samples x {c} classes needs "
            f"{need / 2**30:.3g} GiB, more than this machine's {have / 2**30:.3g} GiB of memory"
        )
    try:
        tracker = TDDSTracker(
            n, c, window=window, decay=decay, trajectory_len=trajectory_len, backend=backend, on_nonfinite=on_nonfinite
        )
    except (RuntimeError, MemoryError) as exc:  # an N given by --num-samples that does not fit
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        raise DumpError(
            f"--num-samples {n}: the tracker state for {n} samples x {c} classes needs "
            f"{state_bytes(n, c, window) / 2**30:.3g} GiB, which could not be allocated"
        ) from None
    rows = max(1, ROWS_PER_BATCH_ELEMENTS // c)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=sum(f.rows for f in files),
            unit="row",
            unit_scale=True,
            desc="scoring",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    try:
        for f in files:
            try:
                for out, idx in zip(_read_rows(f.output, rows), _read_rows(f.index, rows)):
                    if out.dtype not in (np.float32, np.float16):  # float64 dumps: the contract is fp32
                        out = out.astype(np.float32)
                    tracker.update(torch.from_numpy(out), torch.from_numpy(idx.astype(np.int64, copy=False)))
                    if bar is not None:
                        bar.update(idx.shape[0])
                nonfinite = tracker.epoch_counts()["nonfinite"]
                if nonfinite and on_nonfinite == "error":
                    raise DumpError(
                        f"{f.output}: {nonfinite} rows of epoch {f.epoch} have inf/nan logits; pass "
                        "--on-nonfinite skip (on_nonfinite='skip') to score without them"
                    )
                tracker.end_epoch()
            except ValueError as exc:
                raise DumpError(f"{f.output}: {exc}") from None
    finally:
        if bar is not None:
            bar.close()
    return tracker.scores().cpu().numpy(), tracker.stats


def release_arrays(scores, window: int, trajectory_len: int) -> dict[str, np.ndarray]:
    """The release's files for (N,) scores by dataset index: {file name: array}. The mask is the
    ascending argsort of the scores (the release's order), the score file the scores in it."""
    scores = torch.as_tensor(scores).detach().cpu()
    if scores.dim() != 1 or not scores.dtype.is_floating_point:
        raise TypeError(f"scores: expected a 1-D float tensor, got {scores.dim()}-D {scores.dtype}")
    scores = scores.to(torch.float32)
    order = ascending_order(scores)
    mask_name, score_name = output_names(window, trajectory_len)
    return {mask_name: order.numpy().astype(np.int64), score_name: scores[order].numpy(), "scores.npy": scores.numpy()}


def write_arrays(arrays: dict[str, np.ndarray], out_dir) -> None:
    """np.save every array into `out_dir` under its name, all or none (core.atomic_files.replace_files:
    on an error every previous file is back as it was and no temporary file remains); folders
    created for them are removed again on an error."""
    out_dir = Path(out_dir)
    created = []
    try:
        for folder in reversed((out_dir, *out_dir.parents)):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        replace_files({out_dir / name: (lambda f, arr=arr: np.save(f, arr)) for name, arr in arrays.items()})
    except BaseException:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def write_release_outputs(scores, out_dir, window: int, trajectory_len: int) -> tuple[str, ...]:
    """Write release_arrays(scores, window, trajectory_len) into `out_dir`, all or none; returns
    the file names (mask, scores in mask order, scores.npy)."""
    arrays = release_arrays(scores, window, trajectory_len)
    write_arrays(arrays, out_dir)
    return tuple(arrays)
