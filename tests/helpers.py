"""Moved to tests/support/helpers.py; this re-export keeps `from helpers import ...` working for
one release (import from tests.support.helpers instead)."""

from tests.support.helpers import *  # noqa: F401, F403
from tests.support.helpers import one_thread_per_module  # noqa: F401  (an autouse fixture, imported by name)
