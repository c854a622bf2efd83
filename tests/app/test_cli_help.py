"""What `tdds-kernels --version` and each command's --help tell a newcomer, and the score defaults."""

import numpy as np
import pytest

import tdds_kernels
from tdds_kernels import cli

from tests.support.dense import dense_scores
from tests.support.dumps import write_dump
from tests.support.helpers import random_epochs


def help_text(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # independent of the terminal's line wrapping


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"tdds-kernels {tdds_kernels.__version__} (torch ")


def test_top_level_help_lists_the_commands_with_examples(capsys):
    out = help_text(capsys)
    assert "score" in out and "demo" in out and "--version" in out
    assert "tdds-kernels demo --quick" in out and "tdds-kernels score " in out


def test_score_defaults_are_the_release_settings():
    args = cli.build_parser().parse_args(["score", "some_dir"])
    assert (args.trajectory_len, args.window, args.decay) == (30, 10, 0.9)


def test_score_help_says_what_it_reads_and_writes(capsys):
    out = help_text(capsys, "score")
    for name in (
        "{t}_Output.npy",
        "{t}_Index.npy",
        "data_mask_win{W}_ep{T}.npy",
        "score_win{W}_ep{T}.npy",
        "scores.npy",
        "(default: 30)",
        "(default: 10)",
        "(default: 0.9)",
        "example",
    ):
        assert name in out, name
    assert "(default: None)" not in out
    # Dumps that start at a later epoch, and what a failure looks like.
    assert "--first-epoch K" in out and "K = --first-epoch, 0 unless given" in out
    assert "exit codes: 0 done, 2" in out and "none of them is changed" in out


@pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")
def test_score_without_parameters_uses_the_defaults(tmp_path, capsys):
    epochs = random_epochs(np.random.default_rng(3), 12, 3, 30)
    dump = write_dump(tmp_path / "d", epochs)
    assert cli.main(["score", str(dump), "--no-progress", "--backend", "reference"]) == 0
    assert "W=10, beta=0.9" in capsys.readouterr().out
    np.testing.assert_allclose(
        np.load(dump / "scores.npy"), dense_scores(epochs, 12, 10, 0.9, 30), rtol=1e-5, atol=1e-6
    )
    order = np.load(dump / "data_mask_win10_ep30.npy")
    np.testing.assert_array_equal(np.load(dump / "score_win10_ep30.npy"), np.load(dump / "scores.npy")[order])


def test_demo_help_says_what_it_runs_how_long_and_what_it_writes(capsys):
    pytest.importorskip("tqdm")
    out = help_text(capsys, "demo")
    for words in ("MNIST-1D", "minutes", "--quick", "results.json", "results.md", "plot.png", "smoke test"):
        assert words in out, words
