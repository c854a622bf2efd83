"""Loads the compiled extension, which registers tdds::update_ext / tdds::epoch_step_ext.

The module keeps its build name tdds_kernels._C (setup.py); importing it here lets the registry
treat it like any other backend module: import on demand, remember why it failed.
"""

from .. import _C  # noqa: F401
from . import schema  # noqa: F401  (the extension implements schemas declared there)
