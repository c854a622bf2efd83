"""`tdds-kernels score`: the command over the offline scorer (tdds_kernels.offline): its options,
help text, messages and exit codes (0 done, 2 a bad dump folder or bad parameters)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

DEFAULT_TRAJECTORY_LEN, DEFAULT_WINDOW, DEFAULT_DECAY = 30, 10, 0.9  # the release's settings
MIN_WINDOW = 3  # as TrackerConfig (docs/design.md §1): a 2-epoch window's R is always 0

DESCRIPTION = """\
Score a folder of per-epoch logit dumps with TDDS, as the release's scoring script does.

reads   DUMP_DIR/{t}_Output.npy  (rows, classes) float logits, in loader order
        DUMP_DIR/{t}_Index.npy   (rows,) integer dataset indices of those rows
        for epochs t = K .. K+T-1, K = --first-epoch, 0 unless given (other files, e.g.
        {t}_Loss.npy, are ignored)
writes  data_mask_win{W}_ep{T}.npy  dataset indices sorted by ascending score
        score_win{W}_ep{T}.npy      the scores in that order
        scores.npy                  the scores by dataset index
        into --out (default: DUMP_DIR), the three as a set: on any error none of them is
        changed. Epochs are streamed: memory is O(samples x classes).
exit codes: 0 done, 2 a bad dump folder, bad parameters or an unwritable --out (one line on
        stderr naming the file or option)."""

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
    parser.add_argument(
        "--trajectory-len",
        "-T",
        type=int,
        default=DEFAULT_TRAJECTORY_LEN,
        help="epochs scored (T): epochs K..K+T-1 are read",
    )
    parser.add_argument(
        "--first-epoch",
        "-K",
        type=int,
        default=0,
        metavar="K",
        help="number of the first epoch scored (K), for folders whose dumps do not start at epoch 0 "
        "(default: 0, whatever epochs the folder holds)",
    )
    parser.add_argument(
        "--window", "-W", type=int, default=DEFAULT_WINDOW, help=f"window size (W), >= {MIN_WINDOW} and <= T"
    )
    parser.add_argument(
        "--decay", "-b", type=float, default=DEFAULT_DECAY, help="EMA weight of the newest window (beta)"
    )
    parser.add_argument("--out", help="output folder (default: the dump folder)")
    parser.add_argument("--backend", default="auto", help="auto, reference, cpu, cuda or triton")
    parser.add_argument(
        "--num-samples",
        type=int,
        help="dataset size N (default: max index + 1, refused when over 4x the rows of the largest "
        "epoch and over 65536: pass N to confirm it)",
    )
    parser.add_argument(
        "--on-nonfinite", choices=("error", "skip"), default="error", help="rows with inf/nan logits: fail or skip them"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (one is shown only when stderr is a terminal)"
    )
    parser.set_defaults(run=run)


class OptionError(ValueError):
    """A bad option, found before the offline scorer (and torch) is imported."""


def _check_out_dir(out: Path) -> None:
    """Refuse an --out that cannot become a folder before spending the scoring time on it."""
    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        what = "is a file" if folder == out else f"lies under {folder}, which is not a folder"
        raise OptionError(f"--out {out}: expected a folder (existing or to create), but it {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OptionError(f"--out {out}: {folder} is not writable")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_options(args) -> None:
    """The options alone, before anything is read or imported: an OptionError naming one."""
    if args.window < MIN_WINDOW:
        raise OptionError(
            f"-W/--window: expected W >= {MIN_WINDOW}, got {args.window} (a window of 2 epochs holds one "
            "transition, whose deviation from its own mean is 0: every score would be 0)"
        )
    if args.trajectory_len < args.window:
        raise OptionError(f"-T/--trajectory-len: expected T >= W ({args.window}), got {args.trajectory_len}")
    if not 0.0 < args.decay <= 1.0:
        raise OptionError(f"-b/--decay: expected a value in (0, 1], got {args.decay}")
    if args.first_epoch < 0:
        raise OptionError(f"-K/--first-epoch: expected an epoch number >= 0, got {args.first_epoch}")
    if args.num_samples is not None and args.num_samples < 1:
        raise OptionError(f"--num-samples: expected a dataset size >= 1, got {args.num_samples}")
    if args.out:
        _check_out_dir(Path(args.out))


def run(args) -> int:
    start = time.perf_counter()
    out_dir = Path(args.out) if args.out else Path(args.dump_dir)
    try:
        check_options(args)
    except OptionError as exc:
        print(f"tdds-kernels score: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    from ..offline import DumpError, score_dump, write_release_outputs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "auto" falling back is reported below
            scores, stats = score_dump(
                args.dump_dir,
                args.trajectory_len,
                args.window,
                args.decay,
                args.num_samples,
                args.backend,
                args.on_nonfinite,
                progress=not args.no_progress and sys.stderr.isatty(),
                first_epoch=args.first_epoch,
            )
    except (DumpError, ValueError, TypeError) as exc:
        print(f"tdds-kernels score: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unreadable folder or file (permissions, I/O errors)
        where = exc.filename or args.dump_dir
        print(f"tdds-kernels score: error: {where}: cannot read it ({exc.strerror or _one_line(exc)})", file=sys.stderr)
        return 2
    n, t = scores.shape[0], args.trajectory_len
    if stats["missing"] or stats["duplicates"]:
        print(
            f"tdds-kernels score: warning: {stats['missing']} (sample, epoch) pairs missing and "
            f"{stats['duplicates']} duplicate rows over {t} epochs; scored per docs/design.md §3 (the "
            "release would zero-fill missing rows and sum duplicates)",
            file=sys.stderr,
        )
    try:
        mask_name, score_name, _ = write_release_outputs(scores, out_dir, args.window, t)
    except OSError as exc:  # not writable, a file in the way, a full disk: nothing was replaced
        where = f" ({exc.filename})" if exc.filename else ""
        # numpy reports a short write without an errno ("N requested and M written")
        reason = exc.strerror or f"a short write ({_one_line(exc)}): is the disk full?"
        print(
            f"tdds-kernels score: error: --out {out_dir}: cannot write the outputs{where}: {reason}; "
            "no output file was changed",
            file=sys.stderr,
        )
        return 2
    epochs = f"{t} epochs" if not args.first_epoch else f"{t} epochs ({args.first_epoch}..{args.first_epoch + t - 1})"
    print(
        f"scored {n} samples x {epochs} (W={args.window}, beta={args.decay}) in "
        f"{time.perf_counter() - start:.2f} s; missing={stats['missing']} "
        f"duplicates={stats['duplicates']} nonfinite={stats['nonfinite']}; wrote {mask_name}, "
        f"{score_name}, scores.npy to {out_dir}"
    )
    return 0
