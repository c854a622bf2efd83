# Triton kernels run on CPU tensors only under the interpreter, and the flag is read when each
# @triton.jit function is defined, so it is decided here, before tdds_kernels is imported.
# With a CUDA device the compiled kernels are what must be tested (and what `auto` picks), so
# the interpreter is the default only on machines without one; an explicit TRITON_INTERPRET
# in the environment always wins.
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]  # tests import these from tests/support/paths.py
FIXTURES = REPO / "tests" / "fixtures"
# Subprocesses (examples, the CLI, resumes in a fresh process) import this checkout's package,
# not another copy that happens to be installed.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
