"""`tdds-kernels demo --in-run` end to end at a tiny setting: every method and seed ran, the
compute each counted is what its schedule implies, and the table, JSON and plot are written."""

import argparse
import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from tdds_kernels import demo  # noqa: E402
from tdds_kernels.demo.in_run import METHODS  # noqa: E402


def test_in_run_demo_tiny(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    out = tmp_path / "out"
    argv = "--in-run --dataset digits --num-samples 200 --epochs 4 -T 3 -W 3 --seeds 2 --prune-fractions 0.3,0.7"
    args = parser.parse_args([*argv.split(), "--batch-size", "32", "--no-progress", "--out", str(out)])
    assert args.run(args) == 0
    result = json.loads((out / "in_run.json").read_text())
    n, e, t = result["config"]["train_samples"], 4, 3
    assert n == 160 and result["config"]["command"].endswith("--in-run")
    runs = result["runs"]
    assert len(runs) == 2 * (1 + 2 * (len(METHODS) - 1))
    for r in runs:
        k = n - int(r["fraction"] * n)
        expected = {
            "full": e * n,
            "score-retrain": t * n + e * k,  # the scoring epochs are counted
        }.get(r["method"], t * n + (e - t) * k)
        assert r["samples"] == expected, r
        assert 0.0 <= r["acc"] <= 1.0 and r["seconds"] > 0
        assert r["samples_share"] == pytest.approx(expected / (e * n))
    table = (out / "in_run.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in table
    assert "beat in-run random" in table and "Machine:" in table
    assert (out / "in_run.png").stat().st_size > 10_000
    assert table in capsys.readouterr().out


def test_in_run_demo_refuses_prune_fraction_zero(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--in-run", "--prune-fractions", "0,0.5", "--out", str(tmp_path), "--no-progress"])
    assert args.run(args) == 2
    assert "--prune-fractions: expected fractions in (0, 1) with --in-run" in capsys.readouterr().err
