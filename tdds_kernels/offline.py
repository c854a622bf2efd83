"""Offline scoring of dump folders in the release's format, streamed through the tracker.

A folder holds, per epoch t, `{t}_Output.npy` (N_t, C) logits in loader order and
`{t}_Index.npy` (N_t,) dataset indices. The release loads all T epochs at once; here each epoch
is memory-mapped and fed in batches, so peak memory is O(N·C) whatever T is. Outputs, as the
release names and orders them: `data_mask_win{W}_ep{T}.npy` (ascending argsort of the scores)
and `score_win{W}_ep{T}.npy` (the scores in that order), plus `scores.npy` by dataset index.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
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
            raise DumpError(f"{out_path}: expected a 2-D float array (rows, classes), got "
                            f"{out.ndim}-D {out.dtype}")
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
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if fortran and len(shape) > 1:
            raise DumpError(f"{path}: Fortran-ordered arrays are not supported")
        row_items = int(np.prod(shape[1:], dtype=np.int64))
        buf = np.empty((min(rows, shape[0]),) + tuple(shape[1:]), dtype=dtype)
        for start in range(0, shape[0], rows):
            block = buf[: min(rows, shape[0] - start)]
            got = f.readinto(memoryview(block.reshape(-1)).cast("B"))
            if got != block.size * dtype.itemsize:
                raise DumpError(f"{path}: truncated file ({start + got // max(1, row_items * dtype.itemsize)}"
                                f" of {shape[0]} rows readable)")
            yield block


def score_dump(dump_dir, trajectory_len: int, window: int, decay: float, num_samples=None,
               backend: str = "auto", on_nonfinite: str = "error", progress: bool = False):
    """Score a dump folder; returns (scores float32 (N,), tracker.stats)."""
    files, n, c = scan(dump_dir, trajectory_len, num_samples)
    tracker = TDDSTracker(n, c, window=window, decay=decay, trajectory_len=trajectory_len,
                          backend=backend, on_nonfinite=on_nonfinite)
    rows = max(1, ROWS_PER_BATCH_ELEMENTS // c)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(f.rows for f in files), unit="row", unit_scale=True, desc="scoring",
                   file=sys.stderr, dynamic_ncols=True)
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


def _write_atomic(arrays: dict[str, np.ndarray], out_dir: Path) -> None:
    """Write every array to a temporary file first, then rename all: no partial outputs."""
    replace_files({out_dir / name: (lambda f, arr=arr: np.save(f, arr)) for name, arr in arrays.items()})


DEFAULT_TRAJECTORY_LEN, DEFAULT_WINDOW, DEFAULT_DECAY = 30, 10, 0.9  # the release's settings

DESCRIPTION = """\
Score a folder of per-epoch logit dumps with TDDS, as the release's scoring script does.

reads   DUMP_DIR/{t}_Output.npy  (rows, classes) float logits, in loader order
        DUMP_DIR/{t}_Index.npy   (rows,) integer dataset indices of those rows
        for epochs t = 0 .. T-1 (other files, e.g. {t}_Loss.npy, are ignored)
writes  data_mask_win{W}_ep{T}.npy  dataset indices sorted by ascending score
        score_win{W}_ep{T}.npy      the scores in that order
        scores.npy                  the scores by dataset index
        into --out (default: DUMP_DIR). Epochs are streamed: memory is O(samples x classes)."""

EPILOG = """\
examples:
  tdds-kernels score runs/dumps --out runs/scores        # T=30, W=10, beta=0.9
  tdds-kernels score runs/dumps -T 20 -W 5 -b 0.8 --num-samples 50000
then keep, say, the 30% highest-scoring samples in Python:
  order = numpy.load("runs/scores/data_mask_win10_ep30.npy"); keep = order[-int(0.3 * len(order)):]"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults in the help, and the description's layout kept as written."""

    def _get_help_string(self, action):
        # No "(default: None/False)": those options say in their own words what happens unset.
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_arguments(parser) -> None:
    parser.formatter_class = _HelpFormatter
    parser.description, parser.epilog = DESCRIPTION, EPILOG
    parser.add_argument("dump_dir", help="folder of {t}_Output.npy / {t}_Index.npy per epoch")
    parser.add_argument("--trajectory-len", "-T", type=int, default=DEFAULT_TRAJECTORY_LEN,
                        help="epochs scored (T): epochs 0..T-1 are read")
    parser.add_argument("--window", "-W", type=int, default=DEFAULT_WINDOW, help="window size (W)")
    parser.add_argument("--decay", "-b", type=float, default=DEFAULT_DECAY,
                        help="EMA weight of the newest window (beta)")
    parser.add_argument("--out", help="output folder (default: the dump folder)")
    parser.add_argument("--backend", default="auto", help="auto, reference, cpu, cuda or triton")
    parser.add_argument("--num-samples", type=int, help="dataset size N (default: max index + 1)")
    parser.add_argument("--on-nonfinite", choices=("error", "skip"), default="error",
                        help="rows with inf/nan logits: fail or skip them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    start = time.perf_counter()
    try:
        if args.window < 2 or args.trajectory_len < args.window:
            raise DumpError(f"--window/--trajectory-len: need 2 <= W <= T, got W={args.window}, "
                            f"T={args.trajectory_len}")
        if not 0.0 < args.decay <= 1.0:
            raise DumpError(f"--decay: expected a value in (0, 1], got {args.decay}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "auto" falling back is reported below
            scores, stats = score_dump(args.dump_dir, args.trajectory_len, args.window, args.decay,
                                       args.num_samples, args.backend, args.on_nonfinite,
                                       progress=not args.no_progress)
    except (DumpError, ValueError, TypeError) as exc:
        print(f"tdds-kernels score: error: {exc}", file=sys.stderr)
        return 2
    n, t = scores.shape[0], args.trajectory_len
    if stats["missing"] or stats["duplicates"]:
        print(f"tdds-kernels score: warning: {stats['missing']} (sample, epoch) pairs missing and "
              f"{stats['duplicates']} duplicate rows over {t} epochs; scored per docs/design.md §3 (the "
              "release would zero-fill missing rows and sum duplicates)", file=sys.stderr)
    order = ascending_order(torch.from_numpy(scores)).numpy()
    mask_name, score_name = output_names(args.window, t)
    out_dir = Path(args.out) if args.out else Path(args.dump_dir)
    _write_atomic({mask_name: order.astype(np.int64), score_name: scores[order], "scores.npy": scores},
                  out_dir)
    print(f"scored {n} samples x {t} epochs (W={args.window}, beta={args.decay}) in "
          f"{time.perf_counter() - start:.2f} s; missing={stats['missing']} "
          f"duplicates={stats['duplicates']} nonfinite={stats['nonfinite']}; wrote {mask_name}, "
          f"{score_name}, scores.npy to {out_dir}")
    return 0
