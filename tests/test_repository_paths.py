"""Every repository path named in the docs, comments and docstrings exists.

A "repository path" is a token like `ops/schema.py`, `csrc/cpu/kernels_{avx2,avx512}.cpp` or
`tests/ops/test_fold.py:40` whose first directory is one of the repository's own (a top-level
directory, or one inside tdds_kernels/, csrc/ or tests/, where short paths are read from); it
must name a file or directory from the repository root, from one of those three, or from the
naming file's own directory. Paths of other projects (`ATen/ops/sort.h`, `c10/...`) start with
directories this repository does not have and are not checked; nor are the files a command in a
usage line writes (`--out benchmarks/results/x.md`).
"""

import itertools
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = re.compile(r"(\.(py|md|cpp|h|cu|toml|yml|yaml|cfg|sh|txt)|Makefile)$")
BASES = ("", "tdds_kernels", "csrc", "tests")
EXTENSIONS = "py|md|cpp|h|cu|json|npy|toml|txt|sh|yml|yaml|cfg|pt|png"
_SEGMENT = r"(?:[\w.-]|\{[\w.,-]+\})+"
PATH = re.compile(rf"(?<![\w./:{{}}-])((?:{_SEGMENT}/)+{_SEGMENT}\.(?:{EXTENSIONS}))(?![\w/])")
WRITTEN = re.compile(r"(--out|--json|--before|>)\s*$")  # a command's output file, made when it runs


def tracked():
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def own_dirs(files):
    """First components of the tracked paths, from the root and from each of BASES."""
    firsts = set()
    for f in files:
        for base in BASES:
            if base and not f.startswith(base + "/"):
                continue
            parts = Path(f).relative_to(base).parts if base else Path(f).parts
            if len(parts) > 1:
                firsts.add(parts[0])
    return firsts


def expand(token):
    """csrc/cpu/kernels_{avx2,avx512}.cpp -> every spelled-out path."""
    pieces = re.split(r"\{([^}]*)\}", token)
    options = [p.split(",") if i % 2 else [p] for i, p in enumerate(pieces)]
    return ["".join(c) for c in itertools.product(*options)]


def exists(path, naming_file):
    bases = [REPO / b for b in BASES] + [(REPO / naming_file).parent]
    return any((b / path).exists() for b in bases)


def missing_paths():
    files = tracked()
    firsts = own_dirs(files)
    missing = []
    for f in files:
        if not SCANNED.search(f):
            continue
        for lineno, line in enumerate((REPO / f).read_text(errors="ignore").splitlines(), 1):
            for m in PATH.finditer(line):
                token = m.group(1)
                if token.split("/")[0] not in firsts or WRITTEN.search(line[: m.start()]):
                    continue
                for path in expand(token):
                    if not exists(path, f):
                        missing.append(f"{f}:{lineno}: {path}")
    return missing


def test_named_paths_exist():
    missing = missing_paths()
    assert not missing, "paths named but not in the repository:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    "line, found",
    [
        ("see ops/schema.py and csrc/op_contract.h", ["ops/schema.py", "csrc/op_contract.h"]),
        ("(`csrc/cpu/kernels_{default,avx2}.cpp`)", ["csrc/cpu/kernels_{default,avx2}.cpp"]),
        ("tests/ops/test_fold.py:40", ["tests/ops/test_fold.py"]),
        ("https://example.org/a/b.py", []),
    ],
)
def test_the_scanner_finds_paths(line, found):
    assert [m.group(1) for m in PATH.finditer(line)] == found
