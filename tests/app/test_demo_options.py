"""`tdds-kernels demo` refuses a bad option or a missing package in one line, exit 2, before any
data is made or any model trained; prints its time estimate after the second epoch; and repeats
its own table on the same machine."""

import argparse
import importlib.util
import json

import pytest

from tdds_kernels import demo
from tdds_kernels.demo import options


def parse(argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def no_training(monkeypatch):
    """Any data loading would mean the checks came too late."""
    from tdds_kernels.demo import data

    def refuse(*args, **kwargs):
        raise AssertionError("the demo started on its data before refusing the options")

    monkeypatch.setattr(data, "load", refuse)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--num-samples", "0"], "--num-samples: expected >= 50 for --dataset mnist1d, got 0"),
        (["--dataset", "digits", "--num-samples", "5000"], "--num-samples: expected 50..1797 for --dataset digits"),
        (["--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
        (["-W", "2", "-T", "2"], "--window: expected an integer >= 3, got 2"),
        (["-T", "40"], "-W/-T/--epochs: expected W <= T <= epochs"),
        (["--decay", "0"], "--decay: expected a value in (0, 1], got 0.0"),
        (["--lr", "nan"], "--lr: expected a finite value > 0, got nan"),
        (["--lr", "-1"], "--lr: expected a finite value > 0"),
        (["--batch-size", "0"], "--batch-size: expected an integer >= 1"),
        (["--threads", "0"], "--threads: expected an integer >= 1"),
        (["--shift", "-1"], "--shift: expected positions >= 0"),
        (["--ccs-hard-cut", "1.5"], "--ccs-hard-cut: expected a fraction in [0, 1)"),
        (["--ccs-bins", "0"], "--ccs-bins: expected an integer >= 1"),
        (["--backend", "gpu"], "--backend: expected one of auto, reference, cpu, cuda, triton, got 'gpu'"),
    ],
)
def test_bad_options_are_refused_before_training(tmp_path, capsys, no_training, argv, match):
    args = parse([*argv, "--out", str(tmp_path / "out")])
    assert args.run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tdds-kernels demo: error: ") and match in err, err


def test_an_out_that_cannot_be_a_folder_is_refused_before_training(tmp_path, capsys, no_training):
    (tmp_path / "a_file").write_text("keep me")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        args = parse(["--out", str(out)])
        assert args.run(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {out}" in err, err
    assert (tmp_path / "a_file").read_text() == "keep me"


@pytest.mark.parametrize("module,dataset", [("mnist1d", "mnist1d"), ("sklearn", "digits"), ("matplotlib", "digits")])
def test_a_missing_package_names_the_extra(tmp_path, capsys, monkeypatch, no_training, module, dataset):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    args = parse(["--dataset", dataset, "--out", str(tmp_path / "out")])
    assert args.run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"needs the {module} package" in err and '".[demo]"' in err, err


def test_baseline_names_match_the_tracker():
    from tdds_kernels.core.baselines import NAMES

    assert options.BASELINES == NAMES


def test_quick_on_digits_keeps_every_scan():
    args = parse(["--quick", "--dataset", "digits"])
    options.apply_quick(args)
    assert args.num_samples is None and args.epochs == options.QUICK["epochs"]


TINY = ["--dataset", "digits", "--epochs", "3", "-T", "3", "-W", "3", "--seeds", "1", "--prune-fractions", "0.5"]
TINY += ["--strategies", "tdds", "--backend", "reference", "--no-progress"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_same_machine_same_table_and_an_estimate_after_two_epochs(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    results = []
    for run in ("a", "b"):
        args = parse([*TINY, "--out", str(tmp_path / run)])
        assert args.run(args) == 0
        err = capsys.readouterr().err
        assert "s for the first 2 epochs: about" in err and "min in all on this machine" in err, err
        results.append(json.loads((tmp_path / run / "results.json").read_text()))
    assert [r["accuracy"] for r in results[0]["rows"]] == [r["accuracy"] for r in results[1]["rows"]]
    assert results[0]["full_data_accuracy"] == results[1]["full_data_accuracy"]
