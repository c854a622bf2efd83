"""Smoke test of benchmarks/bench_scale.py --quick: the table and plot exist and hold every row."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_scale_quick(tmp_path):
    pytest.importorskip("matplotlib")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the triton backend is not timed on CPU either way
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_scale.py"),
            "--quick",
            "--threads",
            "1",
            "--curve-threads",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "scale_cpu_quick.md").read_text()
    png = tmp_path / "scale_cpu_quick.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # The table names this machine, its ISA included (an AVX2 and an AVX-512 number differ).
    machine = runpy.run_path(str(ROOT / "benchmarks" / "machine.py"))["describe"]("cpu")
    assert machine in md and ("AVX" in machine or "DEFAULT" in machine) and "Load average" in md
    res = json.loads((tmp_path / "scale_cpu_quick.json").read_text())
    # Whole epochs: each available CPU backend (not the interpreter) x float32/float16, no failures.
    epochs = res["epochs"]
    assert {(r["backend"], r["storage"]) for r in epochs} == {
        (b, s) for b in ("reference", "cpu") for s in ("float32", "float16")
    }
    assert all("error" not in r for r in epochs)
    for r in epochs:
        row = f"| {r['backend']} | 1 | {r['storage']} | {r['n']:,} | {r['c']:,} |"
        assert row in md, row
        assert r["rows"] == r["n"] and r["epochs"] == 1  # exactly one timed whole epoch
        assert r["t_update"] > 0 and r["copy_bw"] > 0 and r["peak"] >= r["before"]
    # Curves: every planned point measured and listed.
    assert sorted((r["n"], r["storage"]) for r in res["by_n"]) == [
        (2_000, "float16"),
        (2_000, "float32"),
        (20_000, "float16"),
        (20_000, "float32"),
    ]
    assert sorted(r["c"] for r in res["by_c"]) == [10, 100, 300]
    assert "## Where the time goes" in md and "C curve: at C = 10 a row costs" in md
    for r in res["by_n"]:
        assert f"| {r['n']:,} | {r['storage']} |" in md
        assert r["rows"] >= 8_192
    # Release-style memory: two N, and it grows with N while the loop keeps all T epochs.
    rel = sorted(res["release"], key=lambda r: r["n"])
    assert [r["n"] for r in rel] == [1_000, 3_000]
    assert all(r["tracker"] is not None for r in rel)
    assert "## Release-style loop" in md and "| 3,000 | 10 | 12 |" in md
