"""`tdds-kernels score` driven in-process as the CLI tests drive it: the release fixture dump
and the check that a bad call fails cleanly (exit 2, one stderr line,
every folder involved unchanged)."""

import os

from tdds_kernels import cli

from tests.support.paths import FIXTURES

SRC = FIXTURES / "small_c10"
T, W = "12", "5"  # the fixture's trajectory and window (params.json)


def snapshot(*roots):
    """{path: bytes} of every file (hidden ones included) and {path: None} of every folder."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _, filenames in os.walk(root):
            out[dirpath] = None
            for name in filenames:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    out[path] = f.read()
    return out


def fails_cleanly(capsys, argv, match, roots):
    """Run `score argv` in-process; assert exit 2, one stderr line holding every string of
    `match`, and `roots` unchanged."""
    before = snapshot(*roots)
    code = cli.main(["score", *map(str, argv), "-T", T, "-W", W, "--no-progress"])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured
    assert len(lines) == 1, lines
    for m in (match,) if isinstance(match, str) else match:
        assert m in lines[0], lines[0]
    assert "Traceback" not in captured.err
    assert snapshot(*roots) == before, "files changed, appeared or vanished"
    return lines[0]
