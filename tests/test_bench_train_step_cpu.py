"""Smoke tests of benchmarks/bench_train_step.py's CPU models: the demo's CNN and ResNet-18 (CIFAR)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, tmp_path):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_train_step.py"),
            "--device",
            "cpu",
            "--no-amp",
            "--threads",
            "1",
            "--steps",
            "2",
            "--warmup",
            "1",
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_model_with_targets(tmp_path):
    pytest.importorskip("tdds_kernels.demo.train")
    out = tmp_path / "t.md"
    r = run(["--model", "demo", "--targets", "--out", str(out), "--title", "demo"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("## demo\n")
    assert "the MNIST-1D demo's 1D CNN" in text and "input 1x40" in text
    # The demo's own shape: N = 20,000, C = 10, batch 100; updates fed targets= as the demo does.
    assert "N = 20,000, C = 10" in text and "batch 100" in text and "update with targets=" in text
    assert "Tracker's share of the step" in text


def test_resnet18_cifar_appends(tmp_path):
    out = tmp_path / "t.md"
    out.write_text("# header\n")
    # A 16x16 input keeps the smoke test short; the model is the same network.
    r = run(
        [
            "--model",
            "resnet18-cifar",
            "--classes",
            "100",
            "--batch",
            "4",
            "--size",
            "16",
            "--out",
            str(out),
            "--append",
            "--title",
            "resnet",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# header\n\n## resnet\n")
    assert "ResNet-18 (CIFAR variant, defined in the script)" in text
    assert "N = 50,000, C = 100" in text and "input 3x16x16" in text
    assert "| step with tracker.update |" in text and "| step without tracker |" in text


def test_resnet18_cifar_shapes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import torch
        from bench_train_step import ResNet18Cifar
    finally:
        sys.path.pop(0)
    m = ResNet18Cifar(10)
    # The standard CIFAR ResNet-18 has 11,173,962 parameters with 10 classes.
    assert sum(p.numel() for p in m.parameters()) == 11_173_962
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
