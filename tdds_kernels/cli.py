"""`tdds-kernels` command line: `score` (offline scoring of dump folders) and `demo`."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdds-kernels",
                                     description="TDDS dataset pruning: score dumps, run the demo.")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import offline
    offline.add_arguments(sub.add_parser("score", help="score a folder of per-epoch logit dumps "
                                         "(drop-in for the release's scoring script)"))
    from . import demo
    demo.add_arguments(sub.add_parser("demo", help="train, score and prune a real dataset; "
                                          "compare coresets against random"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
