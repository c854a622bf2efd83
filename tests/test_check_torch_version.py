"""scripts/check_torch_version.sh refuses bad use before installing anything, and the torch range
stated in docs/extension.md is the one pyproject.toml declares (the check's outcome is recorded
there, so the two must not drift apart)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_torch_version.sh"


def run_script(*args, env_extra=None):
    env = {"PATH": "/usr/bin:/bin", **(env_extra or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_script_requires_one_version_argument():
    for args in ((), ("2.14.1", "extra")):
        proc = run_script(*args)
        assert proc.returncode == 2, proc.stderr
        assert "usage:" in proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_script_refuses_a_work_directory_inside_the_repository():
    # A multi-GB venv inside the checkout would be copied into its own source copy and picked up by tools.
    proc = run_script("2.14.1", env_extra={"WORK": str(ROOT / "build" / "torch-check"), "KEEP": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "inside the repository" in proc.stderr
    assert not (ROOT / "build" / "torch-check" / "venv").exists()


def test_docs_state_the_declared_torch_range():
    pyproject = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"torch>=([\d.]+),<([\d.]+)"', pyproject)
    assert m, "pyproject.toml: expected a dependency of the form torch>=X,<Y"
    floor, cap = m.groups()
    docs = (ROOT / "docs" / "extension.md").read_text()
    assert f"torch ≥ {floor}, < {cap}" in docs
