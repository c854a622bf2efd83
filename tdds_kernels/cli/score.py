"""`tdds-kernels score`: the command over the offline scorer (tdds_kernels.offline): its options,
help text, messages and exit codes (0 done, 2 a bad dump folder or bad parameters)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ..offline import DumpError, score_dump, write_release_outputs

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
    parser.add_argument(
        "--trajectory-len",
        "-T",
        type=int,
        default=DEFAULT_TRAJECTORY_LEN,
        help="epochs scored (T): epochs 0..T-1 are read",
    )
    parser.add_argument("--window", "-W", type=int, default=DEFAULT_WINDOW, help="window size (W)")
    parser.add_argument(
        "--decay", "-b", type=float, default=DEFAULT_DECAY, help="EMA weight of the newest window (beta)"
    )
    parser.add_argument("--out", help="output folder (default: the dump folder)")
    parser.add_argument("--backend", default="auto", help="auto, reference, cpu, cuda or triton")
    parser.add_argument("--num-samples", type=int, help="dataset size N (default: max index + 1)")
    parser.add_argument(
        "--on-nonfinite", choices=("error", "skip"), default="error", help="rows with inf/nan logits: fail or skip them"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    start = time.perf_counter()
    try:
        if args.window < 2 or args.trajectory_len < args.window:
            raise DumpError(
                f"--window/--trajectory-len: need 2 <= W <= T, got W={args.window}, T={args.trajectory_len}"
            )
        if not 0.0 < args.decay <= 1.0:
            raise DumpError(f"--decay: expected a value in (0, 1], got {args.decay}")
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
                progress=not args.no_progress,
            )
    except (DumpError, ValueError, TypeError) as exc:
        print(f"tdds-kernels score: error: {exc}", file=sys.stderr)
        return 2
    n, t = scores.shape[0], args.trajectory_len
    if stats["missing"] or stats["duplicates"]:
        print(
            f"tdds-kernels score: warning: {stats['missing']} (sample, epoch) pairs missing and "
            f"{stats['duplicates']} duplicate rows over {t} epochs; scored per docs/design.md §3 (the "
            "release would zero-fill missing rows and sum duplicates)",
            file=sys.stderr,
        )
    out_dir = Path(args.out) if args.out else Path(args.dump_dir)
    mask_name, score_name, _ = write_release_outputs(scores, out_dir, args.window, t)
    print(
        f"scored {n} samples x {t} epochs (W={args.window}, beta={args.decay}) in "
        f"{time.perf_counter() - start:.2f} s; missing={stats['missing']} "
        f"duplicates={stats['duplicates']} nonfinite={stats['nonfinite']}; wrote {mask_name}, "
        f"{score_name}, scores.npy to {out_dir}"
    )
    return 0
