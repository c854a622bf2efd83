"""`make install` installs torch only when it is missing and never replaces one that is there.

pip is replaced by `echo` (PIP=...), so nothing is installed: the test reads what make would run.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make_install(tmp_path, python):
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "install",
            f"PY={python}",
            "PIP=echo PIP-INSTALL",
            f"TORCH_CONSTRAINT={tmp_path / 'constraint.txt'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc


def test_an_installed_torch_is_kept(tmp_path):
    import torch

    proc = make_install(tmp_path, sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert f"using the installed torch {torch.__version__}" in proc.stdout
    assert "PIP-INSTALL torch" not in proc.stdout
    # Resolving the extras is held to that torch.
    assert (tmp_path / "constraint.txt").read_text().strip() == f"torch=={torch.__version__}"
    assert (
        f"PIP-INSTALL -e .[demo,test,lightning,hf] --no-build-isolation -c {tmp_path / 'constraint.txt'}" in proc.stdout
    )


def test_a_missing_torch_is_installed_at_the_tested_version(tmp_path):
    # A python on which `import torch` fails: a package named torch that raises, first on the path.
    fake = tmp_path / "no_torch"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    proc = make_install(tmp_path, wrapper)
    assert "no torch found; installing torch==2.13.0" in proc.stdout
    assert "PIP-INSTALL torch==2.13.0" in proc.stdout.splitlines()
    # (make then stops where it needs the torch that echo did not install.)
