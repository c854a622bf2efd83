"""`tdds-kernels` speaks in its own terms: option names as typed (-W, --on-nonfinite), the file
at fault named, one line and exit 2 for an unreadable folder; and --help/--version answer without
importing torch."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tdds_kernels import cli, offline

from tests.support.cli import SRC, T, W, fails_cleanly
from tests.support.paths import REPO

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")


@pytest.fixture
def dump(tmp_path):
    """A copy of the fixture dump this test may damage."""
    return Path(shutil.copytree(SRC, tmp_path / "dump"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["score", "--help"],
        ["demo", "--help"],
        ["score", "some_dir", "-W", "2"],  # a bad option, refused before anything is imported
        ["demo", "--num-samples", "0"],
    ],
)
def test_help_version_and_bad_options_do_not_import_torch(argv):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['tdds-kernels', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('tdds_kernels', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('\\nEXIT', code, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    last = run.stdout.strip().splitlines()[-1]
    code = 0 if "--help" in argv or "--version" in argv else 2
    assert last == f"EXIT {code} False", (last, run.stderr[-2000:])


def test_version_names_torch_without_importing_it(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    import torch

    assert capsys.readouterr().out.strip().endswith(f"(torch {torch.__version__})")


# ---------------------------------------------------------------- the smallest window: one rule
def refused(capsys, argv, match):
    """`score argv` exactly as given: exit 2 and one line holding `match`."""
    code = cli.main(["score", *map(str, argv), "--no-progress"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1 and match in lines[0], lines
    return lines[0]


def test_window_2_is_refused_in_the_cli_terms(dump, capsys):  # noqa: F811
    line = refused(capsys, [dump, "-T", T, "-W", "2"], "-W/--window: expected W >= 3, got 2")
    assert "window:" not in line.replace("-W/--window:", ""), "the API's wording leaked into the CLI's message"
    refused(capsys, [dump, "-T", T, "-W", "13"], "-T/--trajectory-len: expected T >= W (13), got 12")
    assert not (dump / "scores.npy").exists()


def test_one_window_rule_in_docs_tracker_and_cli():
    import tdds_kernels as tk
    from tdds_kernels.cli.score import MIN_WINDOW

    with pytest.raises(ValueError, match=f"window: expected an int >= {MIN_WINDOW}"):
        tk.TDDSTracker(10, 3, window=MIN_WINDOW - 1, trajectory_len=5)
    tk.TDDSTracker(10, 3, window=MIN_WINDOW, trajectory_len=5)
    design = (REPO / "docs" / "design.md").read_text()
    rules = set(re.findall(r"W ≥ (\d)", design))
    assert rules == {str(MIN_WINDOW)}, f"docs/design.md states W ≥ {sorted(rules)}"


# ---------------------------------------------------------------- messages naming the file
def test_nonfinite_logits_point_to_the_cli_option(dump, capsys):  # noqa: F811
    logits = np.load(dump / "5_Output.npy")
    logits[3, 2] = np.nan
    np.save(dump / "5_Output.npy", logits)
    line = fails_cleanly(
        capsys, [dump], ("5_Output.npy", "1 rows of epoch 5 have inf/nan logits", "--on-nonfinite skip"), [dump]
    )
    assert "tracker.on_nonfinite" not in line
    out = dump / "o"
    argv = ["score", str(dump), "-T", T, "-W", W, "--on-nonfinite", "skip", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert "nonfinite=1" in capsys.readouterr().out


def test_a_folder_missing_one_epoch_names_that_file(dump, capsys):  # noqa: F811
    (dump / "7_Output.npy").unlink()
    fails_cleanly(
        capsys, [dump], ("7_Output.npy: missing logits file", "found epochs 0..11", "no 7_Output.npy"), [dump]
    )


def test_an_unreadable_folder_is_one_line_and_exit_2(dump, capsys, monkeypatch):  # noqa: F811
    if os.geteuid() != 0:  # a real unreadable folder where permissions apply
        os.chmod(dump, 0)
        try:
            fails_cleanly(capsys, [dump], str(dump), [])
        finally:
            os.chmod(dump, 0o755)

    def denied(dump_dir, *args, **kwargs):  # what reading a folder without permission raises
        raise PermissionError(13, "Permission denied", str(Path(dump_dir) / "0_Index.npy"))

    monkeypatch.setattr(offline, "scan", denied)
    fails_cleanly(capsys, [dump], ("0_Index.npy", "cannot read it (Permission denied)"), [dump])


@pytest.mark.parametrize("command", ["score", "demo"])
def test_every_option_has_help(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    bare = [a.option_strings[0] for a in sub._actions if a.option_strings and not a.help]
    assert not bare, f"{command}: options without help text: {bare}"
