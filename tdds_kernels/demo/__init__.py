"""`tdds-kernels demo`: score a real dataset with TDDS while training on it, then retrain from
scratch on coresets of it and compare strategies against random selection.

    tdds-kernels demo --out demo_out            # MNIST-1D 20k, 5 seeds (about 6 min on 2 quiet CPU cores)
    tdds-kernels demo --quick --out demo_quick  # a smoke test (about 25 s)
"""

from .main import DEFAULT_STRATEGIES, add_arguments, run  # noqa: F401
