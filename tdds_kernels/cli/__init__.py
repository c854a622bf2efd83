"""`tdds-kernels` command line: `score` (offline scoring of dump folders) and `demo`.

Nothing here imports torch: --help, --version and a bad option answer without it (importing
torch takes seconds); each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  tdds-kernels score dumps/ --out scores/   # T=30 W=10 beta=0.9, the release's defaults
  tdds-kernels demo --quick                 # a smoke test, 24 s on a quiet 2-core AMD EPYC
  tdds-kernels demo                         # the MNIST-1D study, 358 s there
run `tdds-kernels COMMAND --help` for a command's options."""


def _version() -> str:
    from importlib import metadata

    from .. import __version__

    try:  # the installed distribution's version: torch itself is not imported for this
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return f"tdds-kernels {__version__} (torch {torch})"


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
