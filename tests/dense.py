"""Moved to tests/support/dense.py; this re-export keeps `from dense import ...` working for one
release (import from tests.support.dense instead)."""

from tests.support.dense import *  # noqa: F401, F403
from tests.support.dense import _softmax32  # noqa: F401  (imported by name by some tests)
