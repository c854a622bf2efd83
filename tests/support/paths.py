"""Where the repository and its release-format fixtures are, for tests and their subprocesses."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"  # the release-format conformance fixtures, in the repository
