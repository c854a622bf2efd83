"""`python -m tdds_kernels.demo`: the demo without the rest of the command line."""

import argparse
import sys

from . import add_arguments

parser = argparse.ArgumentParser(prog="tdds-kernels demo")
add_arguments(parser)
args = parser.parse_args()
sys.exit(args.run(args))
