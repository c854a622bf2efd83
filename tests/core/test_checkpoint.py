"""Checkpoints: atomic save, validated load, bit-identical resume in a fresh process."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import tdds_kernels as tk

from tests.support.helpers import FAST_CPU_BACKENDS, assert_same_state, feed, random_epochs, snapshot
from tests.support.paths import REPO

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")


def _tracker(**kw):
    return tk.TDDSTracker(**({"num_samples": 7, "num_classes": 4, "window": 3, "trajectory_len": 6} | kw))


def test_roundtrip_restores_everything(tmp_path):
    tr = _tracker(storage_dtype=torch.bfloat16, on_nonfinite="skip")
    feed(tr, random_epochs(np.random.default_rng(0), 7, 4, 4, p_missing=0.3, p_dup=0.3, p_nonfinite=0.1))
    tr.save(tmp_path / "t.pt")
    back = tk.TDDSTracker.load(tmp_path / "t.pt")
    assert_same_state(snapshot(tr), snapshot(back))
    assert back.epoch == 4 and back.storage_dtype == torch.bfloat16 and back.on_nonfinite == "skip"


def test_crash_during_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "t.pt"
    tr = _tracker()
    feed(tr, random_epochs(np.random.default_rng(1), 7, 4, 2))
    tr.save(path)
    good = path.read_bytes()
    feed(tr, random_epochs(np.random.default_rng(2), 7, 4, 1))

    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        tr.save(path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["t.pt"], "temporary file left behind"


@pytest.mark.parametrize(
    "change,match",
    [
        ({"num_samples": 8}, "num_samples: tracker has 8, state dict has 7"),
        ({"window": 4}, "window"),
        ({"decay": 0.5}, "decay"),
        ({"trajectory_len": None}, "trajectory_len"),
        ({"storage_dtype": torch.float16}, "storage_dtype"),
    ],
)
def test_load_state_dict_names_mismatch_and_changes_nothing(change, match):
    src = _tracker()
    feed(src, random_epochs(np.random.default_rng(3), 7, 4, 2))
    dst = _tracker(**change)
    before = snapshot(dst)
    with pytest.raises(ValueError, match=match):
        dst.load_state_dict(src.state_dict())
    assert_same_state(before, snapshot(dst))


def test_load_rejects_bad_files(tmp_path):
    sd = _tracker().state_dict()
    for key, value, match in [
        ("version", 99, "format version"),
        ("format", "x", "not a tdds_kernels.TDDSTracker checkpoint"),
        ("ring", torch.zeros(7, 5), "ring: expected shape"),
    ]:
        bad = dict(sd, **{key: value})
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=match):
            if key == "ring":
                _tracker().load_state_dict(bad)
            else:
                tk.TDDSTracker.load(tmp_path / "bad.pt")


RESUME = textwrap.dedent("""
    import sys, numpy as np, torch
    sys.path.insert(0, {repo!r})
    import tdds_kernels as tk
    from tests.support.helpers import feed, random_epochs
    epochs = random_epochs(np.random.default_rng(11), 20, 6, 8, p_missing=0.2, p_dup=0.2)
    stop, path, backend = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if sys.argv[4] == "first":
        tr = tk.TDDSTracker(20, 6, window=3, decay=0.8, trajectory_len=8, backend=backend)
        feed(tr, epochs[:stop])
        tr.save(path)
    else:
        tr = tk.TDDSTracker.load(path, backend=backend)
        feed(tr, epochs[stop:])
        torch.save(tr.scores(), path + ".scores")
""")


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("stop", [1, 3, 6])
def test_resume_in_fresh_process_is_bit_identical(tmp_path, backend, stop):
    script = tmp_path / "resume.py"
    script.write_text(RESUME.format(repo=str(REPO)))
    path = str(tmp_path / "ckpt.pt")
    for phase in ("first", "second"):
        subprocess.run(
            [sys.executable, str(script), str(stop), path, backend, phase],
            check=True,
            cwd=tmp_path,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )
    resumed = torch.load(path + ".scores")
    import sys as _sys

    _sys.path.insert(0, str(REPO / "tests"))
    whole = tk.TDDSTracker(20, 6, window=3, decay=0.8, trajectory_len=8, backend=backend)
    feed(whole, random_epochs(np.random.default_rng(11), 20, 6, 8, p_missing=0.2, p_dup=0.2))
    assert torch.equal(resumed, whole.scores())


CHECKPOINTS = REPO / "tests" / "fixtures" / "checkpoints"


def test_format_1_checkpoint_from_before_the_redesign_loads(tmp_path):
    # Written by the flat-package code (format version 1): bf16 storage, baselines, an open epoch.
    old = torch.load(CHECKPOINTS / "v1_single.pt", weights_only=True)
    expected = torch.load(CHECKPOINTS / "v1_single.expected.pt", weights_only=True)
    tr = tk.TDDSTracker.load(CHECKPOINTS / "v1_single.pt", backend="reference")
    assert tr.epoch == expected["epoch"] == 4 and not tr.complete and tr.on_nonfinite == "skip"
    assert tr.storage_dtype == torch.bfloat16 and tr.stats == expected["stats"]
    assert torch.equal(tr.scores(), expected["scores"])
    for name, values in expected["baselines"].items():
        torch.testing.assert_close(tr.baseline_scores()[name], values, rtol=0, atol=0, equal_nan=True)
    # It is written back in the current format: the same tensors, plus the entries added since,
    # less the forgotten-end_epoch() check's bookkeeping (version 2 dropped it).
    tr.save(tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert old["version"] == 1 and again["version"] == 2
    assert again.keys() - old.keys() == {"checksums", "on_out_of_range"}
    assert old.keys() - again.keys() == {"next_dup_check", "dup_check_mark"}
    assert again["config"] == old["config"] and again["on_out_of_range"] == "error"
    assert again["rows_in_epoch"] == old["rows_in_epoch"]
    for key, value in old.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(again[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
    assert again["baselines"].keys() - old["baselines"].keys() == {"out_of_range_targets"}
    assert again["baselines"]["out_of_range_targets"].tolist() == [0, 0]


def test_format_2_checkpoint_loads_and_resumes(tmp_path):
    # Written by tests/fixtures/checkpoints/write_v2.py when version 2 was current: both options
    # "skip", labels a compiled step left out (one in the open epoch), an open epoch.
    expected = torch.load(CHECKPOINTS / "v2_single.expected.pt", weights_only=True)
    tr = tk.TDDSTracker.load(CHECKPOINTS / "v2_single.pt", backend="reference")
    assert tr.epoch == expected["epoch"] == 4 and tr.rows_in_epoch == expected["rows_in_epoch"] == 3
    assert (tr.on_nonfinite, tr.on_out_of_range) == ("skip", "skip") and tr.stats == expected["stats"]
    assert torch.equal(tr.scores(), expected["scores"])
    for name, values in expected["baselines"].items():
        torch.testing.assert_close(tr.baseline_scores()[name], values, rtol=0, atol=0, equal_nan=True)
    counts = tr.baseline_state_dict()["out_of_range_targets"]
    assert counts.tolist() == expected["out_of_range_targets"].tolist() == [2, 1]
    tr.on_out_of_range = "error"  # the open epoch's left-out label is still reported
    with pytest.raises(ValueError, match="targets: 1 rows of epoch 4"):
        tr.end_epoch()
    tr.on_out_of_range = "skip"
    tr.end_epoch()
    tr.save(tmp_path / "again.pt")
    assert torch.load(tmp_path / "again.pt", weights_only=True)["version"] == 2


def test_forgotten_end_epoch_check_is_not_saved_and_still_fires_after_a_load(tmp_path):
    tr = tk.TDDSTracker(50, 4, window=3, backend="reference")
    x = torch.randn(50, 4)
    tr.update(x[:30], torch.arange(30))  # mid-epoch: 30 of the 50 rows that trigger the check
    sd = tr.state_dict()
    assert not {"next_dup_check", "dup_check_mark"} & sd.keys()
    tr.save(tmp_path / "t.pt")
    back = tk.TDDSTracker.load(tmp_path / "t.pt", backend="reference")
    assert back.rows_in_epoch == 30
    back.update(x[30:], torch.arange(30, 50))  # the 50th row: the check runs, all is well
    with pytest.warns(RuntimeWarning, match="did you forget end_epoch"):
        for _ in range(2):  # the epoch again, without end_epoch(): 50 duplicates in 50 rows
            back.update(x[:25], torch.arange(25))
