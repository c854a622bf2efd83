"""`pip install .` without torch importable at build time (pip's default isolated build) stops
with one line naming the commands to run, and README's library-install route is those commands."""

import re
import subprocess
import sys

from tests.support.paths import REPO

# Runs setup.py as pip's build backend would, with `import torch` failing as in an isolated build.
PROBE = (
    "import runpy, sys\n"
    "sys.modules['torch'] = None  # import torch now raises ImportError\n"
    "sys.argv = ['setup.py', '--name']\n"
    "runpy.run_path('setup.py', run_name='__main__')\n"
)


def test_a_build_without_torch_is_one_line_with_the_command():
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0, "the build went on without torch"
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    for words in ("install torch first", "pip install --no-build-isolation .", "TDDS_NO_EXT=1"):
        assert words in lines[0], lines[0]


def test_readme_gives_the_same_library_route():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- library install -->\n```bash\n(.*?)```", readme, re.S)
    assert block, "README.md: the library-install block (after <!-- library install -->) is missing"
    commands = block.group(1)
    assert "pip install setuptools wheel ninja" in commands
    assert re.search(r"pip install --no-build-isolation \S*\.", commands), commands
    assert commands.index("torch") < commands.index("--no-build-isolation"), "torch must come first"
    assert "TDDS_NO_EXT=1 pip install ." in readme


def test_build_requirements_do_not_pull_torch():
    pyproject = (REPO / "pyproject.toml").read_text()
    requires = re.search(r"\[build-system\]\nrequires = \[(.*?)\]", pyproject).group(1)
    assert "torch" not in requires, "a build requirement on torch would fetch a CUDA build to compile against"
