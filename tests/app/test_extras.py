"""An integration whose trainer package is missing says in one line which extra to install."""

import subprocess
import sys

import pytest

from tests.support.paths import REPO

CASES = {
    "tdds_kernels.integrations.lightning": (("pytorch_lightning", "lightning"), "pytorch-lightning", "lightning"),
    "tdds_kernels.integrations.hf": (("transformers",), "transformers", "hf"),
}


@pytest.mark.parametrize("module", list(CASES))
def test_a_missing_trainer_package_names_the_extra(module):
    blocked, package, extra = CASES[module]
    probe = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # import now raises ImportError, as when not installed\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as exc:\n"
        "    print('ERROR', exc, 'CHAINED', exc.__cause__ is not None or exc.__suppress_context__ is False)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith(f"ERROR {module} needs {package}"), (line, run.stderr[-1000:])
    assert f'".[{extra}]"' in line and f"pip install {package}" in line
    assert line.endswith("CHAINED False"), "the ImportError should not drag the original traceback along"
