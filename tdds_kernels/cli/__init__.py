"""`tdds-kernels` command line: `score` (offline scoring of dump folders) and `demo`."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  tdds-kernels score dumps/ --out scores/   # T=30 W=10 beta=0.9, the release's defaults
  tdds-kernels demo --quick                 # a smoke test, about 25 s on CPU
  tdds-kernels demo                         # the MNIST-1D study, about 6 min on 2 CPU cores
run `tdds-kernels COMMAND --help` for a command's options."""


def _version() -> str:
    import torch

    from .. import __version__

    return f"tdds-kernels {__version__} (torch {torch.__version__})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdds-kernels",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="TDDS (Temporal Dual-Depth Scoring) dataset pruning: score logit dumps "
        "offline, or run the train-score-prune demo.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import score

    score.add_arguments(
        sub.add_parser("score", help="score a folder of per-epoch logit dumps (drop-in for the release's script)")
    )
    from .. import demo

    demo.add_arguments(sub.add_parser("demo", help="train, score and prune MNIST-1D; compare coresets against random"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
