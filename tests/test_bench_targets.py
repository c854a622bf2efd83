"""Smoke test of benchmarks/bench_targets.py: one row per CPU backend, times and a ratio each."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_targets_small(tmp_path):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "targets.md"
    args = ["--samples", "3000", "--classes", "20", "--batch", "256", "--calls", "4", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_targets.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", out.read_text(), re.M)
    import torch

    from tdds_kernels.ops import registry

    assert {r[0] for r in rows} == set(registry.available(torch.device("cpu"))) - {"triton"}
    h = 0.0005  # the times are printed to 0.001 ms, the ratio to 0.01
    for _, plain, with_targets, ratio in rows:
        p, w, r = float(plain), float(with_targets), float(ratio)
        assert p > 0 and w > 0
        assert (w - h) / (p + h) - 0.005 <= r <= (w + h) / (p - h) + 0.005, (p, w, r)
