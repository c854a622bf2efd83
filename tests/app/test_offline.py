"""`tdds-kernels score`: the release's outputs from a dump folder, and clean failures."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tdds_kernels import cli

from tests.support.dense import dense_scores
from tests.support.dumps import write_dump
from tests.support.helpers import random_epochs
from tests.support.paths import FIXTURES

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")


def run_cli(*args):
    return cli.main(["score", *map(str, args), "--no-progress"])


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="fixtures not found")
def test_scores_fixture_like_the_release(tmp_path, capsys):
    src = FIXTURES / "small_c10"
    assert run_cli(src, "-T", 12, "-W", 5, "-b", 0.9, "--out", tmp_path) == 0
    assert "scored 1000 samples x 12 epochs" in capsys.readouterr().out
    scores = np.load(tmp_path / "scores.npy")
    mask = np.load(tmp_path / "data_mask_win5_ep12.npy")
    sorted_scores = np.load(tmp_path / "score_win5_ep12.npy")
    np.testing.assert_allclose(scores, np.load(src / "expected_scores.npy"), rtol=1e-5, atol=2e-6)
    assert sorted(mask.tolist()) == list(range(1000))
    np.testing.assert_array_equal(sorted_scores, scores[mask])
    assert np.all(np.diff(sorted_scores) >= 0), "data_mask must sort the scores ascending"


def test_python_dash_m_entry_point(tmp_path):
    dump = write_dump(tmp_path / "d", random_epochs(np.random.default_rng(0), 30, 4, 5))
    res = subprocess.run(
        [sys.executable, "-m", "tdds_kernels", "score", str(dump), "-T", "5", "-W", "3", "-b", "0.9", "--no-progress"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert res.returncode == 0, res.stderr
    assert (dump / "data_mask_win3_ep5.npy").is_file() and (dump / "score_win3_ep5.npy").is_file()


def test_missing_and_duplicate_samples_warn_and_follow_the_semantics(tmp_path, capsys):
    epochs = random_epochs(np.random.default_rng(1), 25, 5, 6, p_missing=0.2, p_dup=0.2)
    dump = write_dump(tmp_path / "d", epochs)
    assert run_cli(dump, "-T", 6, "-W", 3, "-b", 0.8, "--num-samples", 25) == 0
    err = capsys.readouterr().err
    assert "pairs missing" in err and "duplicate rows" in err
    np.testing.assert_allclose(np.load(dump / "scores.npy"), dense_scores(epochs, 25, 3, 0.8), rtol=1e-4, atol=2e-5)


def _fails_cleanly(tmp_path, capsys, dump, *extra, match):
    out = tmp_path / "out"
    code = run_cli(dump, "-T", 4, "-W", 3, "-b", 0.9, "--out", out, *extra)
    err = capsys.readouterr().err
    assert code == 2
    lines = [l for l in err.splitlines() if "error" in l]
    assert len(lines) == 1 and match in lines[0], err
    assert not out.exists() or not any(out.iterdir()), "partial outputs written"


def test_missing_epoch_file(tmp_path, capsys):
    dump = write_dump(tmp_path / "d", random_epochs(np.random.default_rng(2), 10, 3, 3))
    _fails_cleanly(tmp_path, capsys, dump, match=f"{dump / '3_Output.npy'}: missing logits file")


def test_malformed_file(tmp_path, capsys):
    dump = write_dump(tmp_path / "d", random_epochs(np.random.default_rng(3), 10, 3, 4))
    (dump / "2_Index.npy").write_bytes(b"not numpy")
    _fails_cleanly(tmp_path, capsys, dump, match="2_Index.npy: not a readable .npy file")


def test_mismatched_class_counts(tmp_path, capsys):
    dump = write_dump(tmp_path / "d", random_epochs(np.random.default_rng(4), 10, 3, 4))
    np.save(dump / "1_Output.npy", np.zeros((10, 4), np.float32))
    _fails_cleanly(tmp_path, capsys, dump, match="1_Output.npy: 4 classes, but epoch 0 has 3")


def test_row_count_mismatch(tmp_path, capsys):
    dump = write_dump(tmp_path / "d", random_epochs(np.random.default_rng(5), 10, 3, 4))
    np.save(dump / "2_Index.npy", np.arange(9))
    _fails_cleanly(tmp_path, capsys, dump, match="2_Index.npy: 9 indices for 10 rows")


@pytest.mark.parametrize(
    "bad,extra,match", [(-1, (), "negative dataset index -1"), (10, ("--num-samples", 10), "index 10 out of range")]
)
def test_out_of_range_indices(tmp_path, capsys, bad, extra, match):
    dump = write_dump(tmp_path / "d", random_epochs(np.random.default_rng(6), 10, 3, 4))
    idx = np.load(dump / "3_Index.npy")
    idx[0] = bad
    np.save(dump / "3_Index.npy", idx)
    _fails_cleanly(tmp_path, capsys, dump, *extra, match=match)


def test_nonfinite_logits_fail_unless_skipped(tmp_path, capsys):
    dump = write_dump(tmp_path / "d", random_epochs(np.random.default_rng(7), 10, 3, 4))
    out = np.load(dump / "2_Output.npy")
    out[3, 1] = np.nan
    np.save(dump / "2_Output.npy", out)
    _fails_cleanly(
        tmp_path, capsys, dump, match="2_Output.npy: 1 rows of epoch 2 have inf/nan logits; pass --on-nonfinite skip"
    )
    assert run_cli(dump, "-T", 4, "-W", 3, "-b", 0.9, "--on-nonfinite", "skip") == 0
    assert "nonfinite=1" in capsys.readouterr().out


def test_bad_parameters(tmp_path, capsys):
    dump = write_dump(tmp_path / "d", random_epochs(np.random.default_rng(8), 10, 3, 4))
    assert run_cli(dump, "-T", 3, "-W", 4, "-b", 0.9) == 2
    assert "-T/--trajectory-len: expected T >= W (4), got 3" in capsys.readouterr().err
    assert run_cli(dump, "-T", 3, "-W", 2, "-b", 0.9) == 2  # a window of one transition scores 0
    assert "-W/--window: expected W >= 3, got 2" in capsys.readouterr().err
    assert run_cli(tmp_path / "nope", "-T", 3, "-W", 3, "-b", 0.9) == 2
    assert "not a directory" in capsys.readouterr().err


def test_float16_and_int32_dumps(tmp_path):
    epochs = random_epochs(np.random.default_rng(9), 12, 4, 4)
    dump = tmp_path / "d"
    dump.mkdir()
    for t, b in enumerate(epochs):
        np.save(dump / f"{t}_Output.npy", np.concatenate([l for l, _ in b]).astype(np.float16))
        np.save(dump / f"{t}_Index.npy", np.concatenate([i for _, i in b]).astype(np.int32))
    assert run_cli(dump, "-T", 4, "-W", 3, "-b", 0.9) == 0
    as16 = [[(l.astype(np.float16).astype(np.float32), i) for l, i in b] for b in epochs]
    np.testing.assert_allclose(np.load(dump / "scores.npy"), dense_scores(as16, 12, 3, 0.9), rtol=1e-4, atol=2e-5)
