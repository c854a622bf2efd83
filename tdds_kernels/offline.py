"""Offline scoring of dump folders in the release's format, streamed through the tracker.

A folder holds, per epoch t, `{t}_Output.npy` (N_t, C) logits in loader order and
`{t}_Index.npy` (N_t,) dataset indices. The release loads all T epochs at once; here each epoch
is memory-mapped and fed in batches, so peak memory is O(N·C) whatever T is. Outputs, as the
release names and orders them: `data_mask_win{W}_ep{T}.npy` (ascending argsort of the scores)
and `score_win{W}_ep{T}.npy` (the scores in that order), plus `scores.npy` by dataset index.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .core.checkpoint import replace_files
from .core.selection import ascending_order
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


def _open(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DumpError(f"{path}: missing {what} file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise DumpError(f"{path}: not a readable .npy file ({exc})") from None


def scan(dump_dir, trajectory_len: int, num_samples: int | None = None):
    """Check epochs 0..T−1 exist and fit together; returns (files, N, C).

    Reads only the small index files and the headers of the logit files.
    """
    dump_dir = Path(dump_dir)
    if not dump_dir.is_dir():
        raise DumpError(f"{dump_dir}: not a directory")
    files, num_classes, max_index = [], None, -1
    for t in range(trajectory_len):
        out_path, idx_path = dump_dir / f"{t}_Output.npy", dump_dir / f"{t}_Index.npy"
        out, idx = _open(out_path, "logits"), _open(idx_path, "index")
        if out.ndim != 2 or out.dtype.kind != "f":
            raise DumpError(f"{out_path}: expected a 2-D float array (rows, classes), got {out.ndim}-D {out.dtype}")
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise DumpError(f"{idx_path}: expected a 1-D integer array, got {idx.ndim}-D {idx.dtype}")
        if idx.shape[0] != out.shape[0]:
            raise DumpError(f"{idx_path}: {idx.shape[0]} indices for {out.shape[0]} rows of {out_path.name}")
        if num_classes is None:
            num_classes = out.shape[1]
        elif out.shape[1] != num_classes:
            raise DumpError(f"{out_path}: {out.shape[1]} classes, but epoch 0 has {num_classes}")
        if idx.shape[0]:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0:
                raise DumpError(f"{idx_path}: negative dataset index {lo}")
            if num_samples is not None and hi >= num_samples:
                raise DumpError(f"{idx_path}: dataset index {hi} out of range for --num-samples {num_samples}")
            max_index = max(max_index, hi)
        files.append(EpochFiles(t, out_path, idx_path, int(out.shape[0])))
    n = num_samples if num_samples is not None else max_index + 1
    if n <= 0:
        raise DumpError(f"{dump_dir}: no samples in epochs 0..{trajectory_len - 1}")
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
            yield block


def score_dump(
    dump_dir,
    trajectory_len: int,
    window: int,
    decay: float,
    num_samples=None,
    backend: str = "auto",
    on_nonfinite: str = "error",
    progress: bool = False,
):
    """Score a dump folder; returns (scores float32 (N,), tracker.stats)."""
    files, n, c = scan(dump_dir, trajectory_len, num_samples)
    tracker = TDDSTracker(
        n, c, window=window, decay=decay, trajectory_len=trajectory_len, backend=backend, on_nonfinite=on_nonfinite
    )
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
            for out, idx in zip(_read_rows(f.output, rows), _read_rows(f.index, rows)):
                if out.dtype not in (np.float32, np.float16):  # float64 dumps: the contract is fp32
                    out = out.astype(np.float32)
                tracker.update(torch.from_numpy(out), torch.from_numpy(idx.astype(np.int64, copy=False)))
                if bar is not None:
                    bar.update(idx.shape[0])
            try:
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
    """np.save every array into `out_dir` under its name, all or none (temporary files, then renames)."""
    replace_files({Path(out_dir) / name: (lambda f, arr=arr: np.save(f, arr)) for name, arr in arrays.items()})


def write_release_outputs(scores, out_dir, window: int, trajectory_len: int) -> tuple[str, ...]:
    """Write release_arrays(scores, window, trajectory_len) into `out_dir`, all or none; returns
    the file names (mask, scores in mask order, scores.npy)."""
    arrays = release_arrays(scores, window, trajectory_len)
    write_arrays(arrays, out_dir)
    return tuple(arrays)
