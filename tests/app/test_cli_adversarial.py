"""`tdds-kernels score` under bad input and failing filesystems, as an adversarial user drives it.

Every case asserts the promise of the command: exit code 2, exactly one line on stderr naming the
file or option at fault, and every folder involved bit-identical afterwards (the same files with
the same bytes, no new hidden temporary or backup file, no half-written output set).
"""

import errno
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tdds_kernels import cli, offline

from tests.support.cli import SRC, T, W, fails_cleanly, snapshot
from tests.support.paths import FIXTURES

pytestmark = [
    pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend"),
    pytest.mark.skipif(not (FIXTURES / "small_c10").is_dir(), reason="fixtures not found"),
]


@pytest.fixture
def dump(tmp_path):
    """A copy of the fixture dump this test may damage."""
    return Path(shutil.copytree(SRC, tmp_path / "dump"))


@pytest.fixture
def old_outputs(tmp_path):
    """An output folder holding a complete set from an earlier run (beta 0.5, so its bytes differ)."""
    out = tmp_path / "out"
    assert cli.main(["score", str(SRC), "-T", T, "-W", W, "-b", "0.5", "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["data_mask_win5_ep12.npy", "score_win5_ep12.npy", "scores.npy"]
    return out


# ---------------------------------------------------------------- corrupt dump folders
def set_index(dump, t, pos, value, dtype=np.int64):
    idx = np.load(dump / f"{t}_Index.npy").astype(dtype)
    idx[pos] = value
    np.save(dump / f"{t}_Index.npy", idx)


def truncate(path, nbytes):
    data = path.read_bytes()
    path.write_bytes(data[:-nbytes])


CORRUPTIONS = {
    # name: (corrupt(dump), strings the one line must hold)
    "index 10**12": (lambda d: set_index(d, 3, 0, 10**12), ("3_Index.npy", "index 1000000000000", "--num-samples")),
    "index 3,000,000": (lambda d: set_index(d, 3, 7, 3_000_000), ("3_Index.npy", "3000001 samples", "--num-samples")),
    "negative index": (lambda d: set_index(d, 5, 2, -4), ("5_Index.npy", "negative dataset index -4")),
    "npz named npy": (
        lambda d: (np.savez(d / "x.npz", a=np.load(d / "4_Index.npy")), os.replace(d / "x.npz", d / "4_Index.npy")),
        ("4_Index.npy", "npz"),
    ),
    "pickle": (
        lambda d: (d / "4_Output.npy").write_bytes(pickle.dumps(np.load(d / "4_Output.npy"))),
        ("4_Output.npy", "pickle"),
    ),
    "object array": (
        lambda d: np.save(d / "2_Index.npy", np.array([1, "a"], dtype=object), allow_pickle=True),
        ("2_Index.npy", "Python objects"),
    ),
    "truncated logits": (lambda d: truncate(d / "6_Output.npy", 40), ("6_Output.npy", "truncated", "(1000, 10)")),
    "truncated index": (lambda d: truncate(d / "6_Index.npy", 8), ("6_Index.npy", "truncated")),
    "header only": (lambda d: truncate(d / "1_Output.npy", 40000), ("1_Output.npy", "truncated")),
    "empty file": (lambda d: (d / "0_Index.npy").write_bytes(b""), ("0_Index.npy", "empty file")),
    "garbled header": (
        lambda d: (d / "0_Output.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<<<<}\n" + b"\0" * 64),
        ("0_Output.npy", "not a readable .npy file"),
    ),
    "3-d logits": (
        lambda d: np.save(d / "2_Output.npy", np.load(d / "2_Output.npy").reshape(1000, 5, 2)),
        ("2_Output.npy", "expected a 2-D float array", "3-D"),
    ),
    "integer logits": (
        lambda d: np.save(d / "2_Output.npy", np.load(d / "2_Output.npy").astype(np.int32)),
        ("2_Output.npy", "expected a 2-D float array", "int32"),
    ),
    "fortran logits": (
        lambda d: np.save(d / "2_Output.npy", np.asfortranarray(np.load(d / "2_Output.npy"))),
        ("2_Output.npy", "Fortran"),
    ),
    "rows mismatch": (
        lambda d: np.save(d / "8_Index.npy", np.load(d / "8_Index.npy")[:-3]),
        ("8_Index.npy", "997 indices for 1000 rows of 8_Output.npy"),
    ),
    "float index": (
        lambda d: np.save(d / "9_Index.npy", np.load(d / "9_Index.npy").astype(np.float64)),
        ("9_Index.npy", "expected a 1-D integer array", "float64"),
    ),
    "2-d index": (
        lambda d: np.save(d / "9_Index.npy", np.load(d / "9_Index.npy").reshape(500, 2)),
        ("9_Index.npy", "expected a 1-D integer array"),
    ),
    "class count mismatch": (
        lambda d: np.save(d / "10_Output.npy", np.load(d / "10_Output.npy")[:, :7].copy()),
        ("10_Output.npy", "7 classes, but epoch 0 has 10"),
    ),
    "missing logits": (lambda d: (d / "7_Output.npy").unlink(), ("7_Output.npy", "missing logits file", "0..11")),
    "missing index": (lambda d: (d / "11_Index.npy").unlink(), ("11_Index.npy", "missing index file")),
    "folder named like a file": (
        lambda d: ((d / "3_Output.npy").unlink(), (d / "3_Output.npy").mkdir()),
        ("3_Output.npy", "not a file"),
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_dump_fails_with_one_line_and_writes_nothing(dump, old_outputs, capsys, case):
    corrupt, match = CORRUPTIONS[case]
    corrupt(dump)
    # Into the dump folder itself (the default --out), and into a folder holding an older set.
    fails_cleanly(capsys, [dump], match, [dump])
    fails_cleanly(capsys, [dump, "--out", old_outputs], match, [dump, old_outputs])


def test_an_index_far_above_the_rows_is_accepted_when_num_samples_says_so(dump, capsys):
    set_index(dump, 3, 0, 70_000)  # over 4x the 1000 rows and over the 65536 floor
    fails_cleanly(capsys, [dump], ("3_Index.npy", "70001 samples"), [dump])
    out = dump / "o"
    assert cli.main(["score", str(dump), "-T", T, "-W", W, "--num-samples", "70001", "--out", str(out)]) == 0
    assert np.load(out / "scores.npy").shape == (70001,)
    # Below both limits nothing is refused: a dataset may be larger than what one run dumped.
    set_index(dump, 3, 0, 3999)
    assert cli.main(["score", str(dump), "-T", T, "-W", W, "--out", str(out), "--no-progress"]) == 0
    assert np.load(out / "scores.npy").shape == (4000,)


@pytest.mark.parametrize("knows_memory", [True, False])
def test_a_num_samples_that_cannot_be_allocated_is_one_line(dump, capsys, monkeypatch, knows_memory):
    if not knows_memory:  # no physical-memory figure: the allocator's refusal is reported instead
        monkeypatch.setattr(offline, "_physical_memory", lambda: None)
    line = fails_cleanly(capsys, [dump, "--num-samples", 10**13], "--num-samples 10000000000000", [dump])
    assert "GiB" in line and ("memory" if knows_memory else "could not be allocated") in line


# ---------------------------------------------------------------- bad options
@pytest.mark.parametrize(
    "argv,match",
    [
        (["--first-epoch", "-1"], "--first-epoch: expected an epoch number >= 0, got -1"),
        (["--num-samples", "0"], "--num-samples: expected a dataset size >= 1, got 0"),
        (["--num-samples", "999"], ("_Index.npy", "index 999 out of range for --num-samples 999")),
        (["--first-epoch", "1"], ("12_Output.npy", "missing logits file", "epochs 1..12", "--first-epoch 0")),
        (["-b", "1.5"], "--decay"),
        (["-b", "nan"], "--decay"),
        (["--backend", "nonsense"], "backend"),
    ],
)
def test_bad_options(dump, capsys, argv, match):
    fails_cleanly(capsys, [dump, *argv], match, [dump])


def test_out_is_a_file_or_under_a_file(dump, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"keep me")
    fails_cleanly(capsys, [dump, "--out", a_file], (f"--out {a_file}", "is a file"), [dump, tmp_path])
    under = a_file / "sub" / "dir"
    fails_cleanly(capsys, [dump, "--out", under], (f"--out {under}", "not a folder"), [dump, tmp_path])


# ---------------------------------------------------------------- failing writes
def fake_numpy_save_full_disk(monkeypatch, fail_on_call):
    """np.save writes half of its bytes, then the disk is full, on its `fail_on_call`-th call."""
    real_save, calls = np.save, []

    def save(f, arr, *a, **k):
        calls.append(1)
        if len(calls) == fail_on_call:
            f.write(b"\x93NUMPY" + b"\0" * (arr.nbytes // 2))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(f, arr, *a, **k)

    monkeypatch.setattr(offline.np, "save", save)


@pytest.mark.parametrize("fail_on_call", [1, 2, 3])
def test_full_disk_leaves_the_previous_set_and_no_temp_file(dump, old_outputs, monkeypatch, capsys, fail_on_call):
    fake_numpy_save_full_disk(monkeypatch, fail_on_call)
    fails_cleanly(
        capsys, [dump, "--out", old_outputs], (f"--out {old_outputs}", "No space left on device"), [dump, old_outputs]
    )


def fake_replace_failing(monkeypatch, fail_on_call):
    """os.replace raises EIO on its `fail_on_call`-th call: a failure between two renames."""
    real_replace, calls = os.replace, []

    def replace(src, dst, *a, **k):
        calls.append(1)
        if len(calls) == fail_on_call:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("fail_on_call", [1, 2, 3])
@pytest.mark.parametrize("hard_links", [True, False])
def test_a_failure_between_renames_restores_the_previous_set(
    dump, old_outputs, monkeypatch, capsys, fail_on_call, hard_links
):
    if not hard_links:  # a filesystem without hard links: the backups are copies

        def no_link(*a, **k):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        monkeypatch.setattr(os, "link", no_link)
    fake_replace_failing(monkeypatch, fail_on_call)
    fails_cleanly(capsys, [dump, "--out", old_outputs], ("--out", "Input/output error"), [dump, old_outputs])


@pytest.mark.parametrize("fail_on_call", [2, 3])
def test_a_failure_between_renames_into_a_new_folder_leaves_no_folder(
    dump, tmp_path, monkeypatch, capsys, fail_on_call
):
    fake_replace_failing(monkeypatch, fail_on_call)
    new = tmp_path / "new" / "deeper"
    fails_cleanly(capsys, [dump, "--out", new], ("--out", "Input/output error"), [dump, tmp_path])
    assert not (tmp_path / "new").exists()


def test_an_output_name_taken_by_a_folder(dump, old_outputs, capsys):
    (old_outputs / "scores.npy").unlink()
    (old_outputs / "scores.npy").mkdir()
    fails_cleanly(capsys, [dump, "--out", old_outputs], ("--out", "scores.npy"), [dump, old_outputs])


def test_a_successful_run_replaces_the_whole_set(dump, old_outputs, capsys):
    before = snapshot(old_outputs)
    assert cli.main(["score", str(dump), "-T", T, "-W", W, "--out", str(old_outputs), "--no-progress"]) == 0
    after = snapshot(old_outputs)
    assert sorted(after) == sorted(before)  # no extra (hidden) file
    assert all(after[p] != before[p] for p in after if before[p] is not None), "every output was rewritten"
    np.testing.assert_allclose(
        np.load(old_outputs / "scores.npy"), np.load(SRC / "expected_scores.npy"), rtol=1e-5, atol=2e-6
    )


# ---------------------------------------------------------------- --first-epoch
def test_first_epoch_scores_a_renumbered_folder_like_the_original(tmp_path, capsys):
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for t in range(12):
        for kind in ("Output", "Index"):
            shutil.copy(SRC / f"{t}_{kind}.npy", shifted / f"{t + 5}_{kind}.npy")
    # An earlier epoch that must not be read: logits of another run.
    rng = np.random.default_rng(0)
    np.save(shifted / "4_Output.npy", rng.normal(size=(1000, 10)).astype(np.float32))
    np.save(shifted / "4_Index.npy", rng.permutation(1000))

    fails_cleanly(capsys, [shifted], ("0_Output.npy", "epochs 4..16", "--first-epoch 4"), [shifted])
    assert cli.main(["score", str(SRC), "-T", T, "-W", W, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    argv = ["score", str(shifted), "-T", T, "-W", W, "--first-epoch", "5", "--out", str(tmp_path / "b")]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert "12 epochs (5..16)" in capsys.readouterr().out
    for name in ("data_mask_win5_ep12.npy", "score_win5_ep12.npy", "scores.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # Starting one epoch earlier reads the foreign epoch 4, and the scores change.
    argv = ["score", str(shifted), "-T", T, "-W", W, "-K", "4", "--out", str(tmp_path / "c"), "--no-progress"]
    assert cli.main(argv) == 0
    assert not np.array_equal(np.load(tmp_path / "c" / "scores.npy"), np.load(tmp_path / "a" / "scores.npy"))


# ---------------------------------------------------------------- end to end, as a user runs it
def run_module(*argv):
    return subprocess.run(
        [sys.executable, "-m", "tdds_kernels", "score", *map(str, argv), "-T", T, "-W", W],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )


@pytest.mark.parametrize("case", ["index 10**12", "npz named npy", "truncated logits"])
def test_python_dash_m_corrupt_dump(dump, case):
    corrupt, match = CORRUPTIONS[case]
    corrupt(dump)
    before = snapshot(dump)
    res = run_module(dump)  # progress bar on by default: stderr is a pipe, so none is drawn
    assert res.returncode == 2, res
    assert len(res.stderr.splitlines()) == 1 and all(m in res.stderr for m in match), res.stderr
    assert snapshot(dump) == before


def test_python_dash_m_out_is_a_file(dump, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"keep me")
    before = snapshot(tmp_path)
    res = run_module(dump, "--out", a_file)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and f"--out {a_file}" in res.stderr, res
    assert snapshot(tmp_path) == before


def test_odd_but_valid_dumps_score_like_the_fixture(dump, tmp_path):
    """Big-endian float64 logits and uint16 indices are data, not errors: same scores."""
    for t in range(12):
        np.save(dump / f"{t}_Output.npy", np.load(dump / f"{t}_Output.npy").astype(">f8"))
        np.save(dump / f"{t}_Index.npy", np.load(dump / f"{t}_Index.npy").astype(">u2"))
    assert cli.main(["score", str(dump), "-T", T, "-W", W, "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    np.testing.assert_allclose(
        np.load(tmp_path / "o" / "scores.npy"), np.load(SRC / "expected_scores.npy"), rtol=1e-5, atol=2e-6
    )
