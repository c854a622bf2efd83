# Triton kernels run on CPU tensors only under the interpreter, and the flag must be set before
# any @triton.jit function is defined, so it is set here, before tdds_kernels is imported.
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # the release-format conformance fixtures, in the repository
# Subprocesses (examples, the CLI, resumes in a fresh process) import this checkout's package,
# not another copy that happens to be installed.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
