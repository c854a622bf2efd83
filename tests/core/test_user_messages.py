"""What a user sees when something is off: files made with their umask, a junk checkpoint named
in words, a warning for scores read early, probabilities passed as logits or one class,
unsigned labels accepted; and the README's claims about the scores' direction."""

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import tdds_kernels as tk
from tdds_kernels import cli
from tdds_kernels.retrain import write_release_files

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")


def tracker(n=8, c=4, t=3, w=3, **kw):
    return tk.TDDSTracker(n, c, trajectory_len=t, window=w, backend="reference", **kw)


def feed(tr, epochs, targets=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        tr.update(torch.randn(tr.num_samples, tr.num_classes, generator=gen), torch.arange(tr.num_samples), targets)
        tr.end_epoch()


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_output_files_honour_the_umask(tmp_path, umask_027):
    tr = tracker()
    feed(tr, 3)
    tr.save(tmp_path / "ckpt.pt")
    paths = [tmp_path / "ckpt.pt", *write_release_files(tr, tmp_path / "release")]
    for p in paths:
        assert os.stat(p).st_mode & 0o777 == umask_027, (p, oct(os.stat(p).st_mode))
    tr.save(tmp_path / "ckpt.pt")  # replacing a file keeps the umask's mode too
    assert os.stat(tmp_path / "ckpt.pt").st_mode & 0o777 == umask_027


def test_cli_outputs_honour_the_umask(tmp_path, umask_027):
    from tests.support.paths import FIXTURES

    out = tmp_path / "out"
    argv = ["score", str(FIXTURES / "small_c10"), "-T", "12", "-W", "5", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert sorted(os.stat(p).st_mode & 0o777 for p in out.iterdir()) == [umask_027] * 3


def test_a_text_file_as_checkpoint_is_named_in_words(tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_text("hello everyone, this is a text file\n" * 5)
    with pytest.raises(ValueError) as exc:
        tk.TDDSTracker.load(junk)
    message = str(exc.value)
    # refused before unpickling anything: a torch.save file is a zip archive
    assert message.startswith(f"{junk}: not a readable") and "not a zip archive, which torch.save writes" in message
    assert "KeyError" not in message and "IndexError" not in message


def test_scores_before_the_trajectory_completes_warn():
    tr = tracker(t=5, w=3)
    feed(tr, 4)
    with pytest.warns(RuntimeWarning, match=r"not complete \(4 of 5 epochs"):
        tr.scores()
    feed(tr, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr.scores()  # complete: silent
    endless = tk.TDDSTracker(8, 4, trajectory_len=None, window=3, backend="reference")
    feed(endless, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        endless.scores()  # no trajectory to complete: silent


def test_probabilities_passed_as_logits_warn():
    logits = torch.randn(8, 4)
    tr = tracker()
    with pytest.warns(RuntimeWarning, match="look like probabilities"):
        tr.update(logits.softmax(1), torch.arange(8))
    for ok in (logits, F.log_softmax(logits, 1)):
        tr = tracker()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tr.update(ok, torch.arange(8))


def test_one_class_warns():
    with pytest.warns(RuntimeWarning, match=r"num_classes=1: .* every score will be 0"):
        tk.TDDSTracker(8, 1)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.uint32, torch.uint64])
def test_unsigned_labels_are_accepted_as_their_values(dtype):
    labels = torch.arange(8) % 4
    a, b = tracker(), tracker()
    feed(a, 3, labels)
    feed(b, 3, labels.to(dtype))
    for name, values in a.baseline_scores().items():
        torch.testing.assert_close(b.baseline_scores()[name], values, equal_nan=True, msg=name)
    with pytest.raises(ValueError, match="targets"):
        tracker().update(torch.randn(8, 4), torch.arange(8), torch.full((8,), 7, dtype=dtype))


def test_readme_directions_scores_and_baselines():
    """README: scores() higher = keep; baseline_scores() raw (AUM lower = keep, the others higher);
    keep_scores(name, values) higher = keep for every baseline. Sample 0 is hard (its label is
    never predicted, and its prediction keeps moving); sample 1 is easy (right and still)."""
    n, c, epochs = 2, 4, 6
    tr = tk.TDDSTracker(n, c, trajectory_len=epochs, window=3, backend="reference")
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1])
    for _ in range(epochs):
        hard = torch.randn(c, generator=gen) * 4
        hard[0] = hard.min() - 1  # the label's logit always the lowest
        easy = torch.tensor([0.0, 8.0, 0.0, 0.0])
        tr.update(torch.stack([hard, easy]), torch.arange(n), labels)
        tr.end_epoch()
    assert tr.scores()[0] > tr.scores()[1], "scores(): the erratic sample must rank higher (keep)"
    raw = tr.baseline_scores()
    assert raw["aum"][0] < raw["aum"][1], "raw AUM: the hard sample is the lower one"
    for name in ("forgetting", "el2n"):
        assert raw[name][0] > raw[name][1], name
    for name, values in raw.items():
        keep = tk.keep_scores(name, values)
        assert keep[0] > keep[1], f"keep_scores({name!r}): the hard sample must rank higher"


def test_readme_states_the_baselines_direction():
    from tests.support.paths import REPO

    row = next(line for line in (REPO / "README.md").read_text().splitlines() if "`tracker.baseline_scores()`" in line)
    assert "AUM lower = keep" in row and "tk.keep_scores(name, values)" in row, row


# ---------------------------------------------------------------- below the promise (round 3)
def test_an_unallocatable_state_names_the_sizes():
    with pytest.raises(
        MemoryError, match=r"num_samples=1000000000000, num_classes=1000: .*GiB.* could not be allocated"
    ):
        tk.TDDSTracker(10**12, 1000)


@pytest.mark.parametrize(
    "options,error,match",
    [
        ([("window", 3)], TypeError, r"baseline_options: expected a dict such as \{'window': 5\}, got list"),
        (
            {"windw": 3},
            TypeError,
            r"baseline_options: unknown option 'windw'; expected some of \('window', 'el2n_epoch'\)",
        ),
        ({"window": 1}, ValueError, r"baseline_options\['window'\]: expected an int >= 2, got 1"),
        ({"el2n_epoch": -1}, ValueError, r"baseline_options\['el2n_epoch'\]: expected None or an int >= 0"),
    ],
)
def test_bad_baseline_options_name_the_option(options, error, match):
    with pytest.raises(error, match=match):
        tk.TDDSTracker(8, 4, baseline_options=options)


def test_negative_labels_are_refused_by_the_selection_helpers():
    with pytest.raises(ValueError, match=r"labels: expected class labels >= 0, got -1"):
        tk.select_coreset("class_balanced", torch.rand(6), torch.tensor([0, 1, -1, 0, 1, 0]), prune_fraction=0.5)


def test_kept_sampler_names_a_bad_seed():
    from tdds_kernels.retrain import kept_sampler

    with pytest.raises(TypeError, match="seed: expected an int or None, got str"):
        kept_sampler(torch.tensor([1, 2]), seed="0")


def test_merge_shards_names_the_missing_shard_and_a_single_checkpoint(tmp_path):
    tr = tracker()
    tr.save(tmp_path / "single.pt")
    with pytest.raises(FileNotFoundError, match=r"single\.pt\.rank0-of-2: no such shard file .*TDDSTracker\.load"):
        tk.merge_shards(tmp_path / "single.pt", 2)
    with pytest.raises(ValueError, match="world_size: expected an int >= 1"):
        tk.merge_shards(tmp_path / "single.pt", 0)


def test_a_full_disk_names_the_checkpoint_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    tr = tracker()
    path = tmp_path / "ckpt.pt"
    tr.save(path)
    before = path.read_bytes()
    feed(tr, 1)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=f"{path}: cannot write the checkpoint \\(No space left on device\\)") as exc:
        tr.save(path)
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
