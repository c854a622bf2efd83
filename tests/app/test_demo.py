"""`tdds-kernels demo` end to end on a tiny setting (a few seconds)."""

import argparse
import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("mnist1d")

from tdds_kernels import demo  # noqa: E402
from tdds_kernels.demo.options import apply_quick, parse_strategy  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    args = parse(
        [
            "--quick",
            "--dataset",
            "digits",
            "--epochs",
            "4",
            "-T",
            "3",
            "-W",
            "3",
            "--seeds",
            "2",
            "--prune-fractions",
            "0.5,0.9",
            "--strategies",
            "tdds,tdds-ccs,tdds-balanced,aum,tdds-weighted",
            "--backend",
            "reference",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert args.run is demo.run
    assert args.run(args) == 0
    result = json.loads((out / "results.json").read_text())
    strategies = ["random", "tdds", "tdds-ccs", "tdds-balanced", "aum", "tdds-weighted"]
    assert [r["strategy"] for r in result["rows"]] == [s for s in strategies for _ in (0.5, 0.9)]
    for r in result["rows"]:
        assert len(r["accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in r["accuracy"])
        assert r["wins_vs_random"] is None if r["strategy"] == "random" else 0 <= r["wins_vs_random"] <= 2
    assert 0.0 < result["full_data_accuracy"] <= 1.0
    assert result["config"]["command"].startswith("tdds-kernels demo --dataset digits --epochs 4")
    table = (out / "results.md").read_text()
    assert table.count("\n| ") == 1 + len(strategies) and "prune 90%" in table
    printed = capsys.readouterr().out
    assert table in printed
    note = printed.rstrip().splitlines()[-1]
    assert note.startswith("note: --quick is a smoke test") and "too small a run to conclude" in note
    assert table.startswith(note), "results.md must carry the smoke-test note too"
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_applies_only_to_defaults():
    args = parse(["--quick", "--seeds", "4"])
    apply_quick(args)
    assert (args.seeds, args.epochs, args.num_samples) == (4, 15, 7500)
    assert args.strategies[0] == "random"


def test_strategy_names():
    assert parse_strategy("tdds") == ("tdds", "top")
    assert parse_strategy("dyn_unc-ccs") == ("dyn_unc", "ccs")
    for bad in ("nope", "tdds-nope", "random-ccs"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_strategy(bad)
    with pytest.raises(SystemExit):
        parse(["--strategies", "tdds-bogus"])
    with pytest.raises(SystemExit):
        parse(["--prune-fractions", "0.5,1.0"])


def test_bad_settings_exit_2(tmp_path, capsys):
    args = parse(["--dataset", "digits", "-T", "3", "-W", "4", "--out", str(tmp_path)])
    assert args.run(args) == 2
    assert "-W/-T/--epochs: expected W <= T <= epochs, got W=4, T=3" in capsys.readouterr().err


def test_cli_has_demo():
    cli = pytest.importorskip("tdds_kernels.cli")
    try:
        parser = cli.build_parser()
    except ImportError as exc:  # another subcommand's module missing in this checkout
        pytest.skip(str(exc))
    args = parser.parse_args(["demo", "--quick"])
    assert args.run is demo.run
