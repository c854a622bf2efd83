"""`tdds-kernels demo`: score a real dataset with TDDS while training on it, then retrain from
scratch on coresets of it and compare strategies against random selection.

    tdds-kernels demo --out demo_out            # MNIST-1D 20k, 5 seeds (358 s on a quiet 2-core AMD EPYC, AVX-512)
    tdds-kernels demo --quick --out demo_quick  # a smoke test (24 s there)

This module imports no torch: the options (options.py) are parsed and checked first, and the
training loop (main.py) is imported only by run().
"""

import sys

from . import options
from .options import DEFAULT_STRATEGIES  # noqa: F401


def run(args) -> int:
    cmd = options.command(args)  # before --quick fills in the options not given
    if args.quick:
        options.apply_quick(args)
    problem = options.check(args)
    if problem:
        print(f"tdds-kernels demo: error: {problem}", file=sys.stderr)
        return 2
    if args.in_run:  # full vs in-run TDDS vs in-run random vs score-then-retrain: OUT/in_run.*
        from .in_run import run as run_in_run

        return run_in_run(args, cmd)
    from .main import run as run_demo

    return run_demo(args, cmd)


def add_arguments(parser) -> None:
    options.add_arguments(parser, run)
