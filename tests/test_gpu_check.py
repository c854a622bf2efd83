"""benchmarks/gpu_check.sh on a machine without a GPU: its quick refusal, and its stage logic
with injected stage commands (GPU_CHECK_FAKE_GPU=1). Nothing here runs a GPU stage or
produces a GPU result; the status lines of such a run say TEST MODE."""

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
STAGES = ["env", "triton_tests", "build", "ext_tests", "sanitize", "bench_ops", "train_step"]

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout"
)


def run(env_extra, *args, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k != "OUT"}
    env.update(env_extra)
    t0 = time.monotonic()
    r = subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
    return r, time.monotonic() - t0


@pytest.mark.parametrize("smi", ["missing", "failing"])
def test_no_gpu_exits_quickly_with_one_line(tmp_path, smi):
    # A missing nvidia-smi, or one that fails (a driverless machine): refused before any stage.
    if smi == "missing":
        fake = str(tmp_path / "no-such-nvidia-smi")
    else:
        fake = tmp_path / "nvidia-smi"
        fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
        fake.chmod(0o755)
        fake = str(fake)
    r, secs = run({"GPU_CHECK_NVIDIA_SMI": fake, "OUT": str(tmp_path / "out")})
    assert r.returncode == 77, r.stderr
    assert secs < 10
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no NVIDIA GPU" in lines[0] and "nothing was run" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_plain_run_without_gpu_refuses():
    r, secs = run({})
    assert r.returncode == 77 and secs < 10 and "nothing was run" in r.stderr


def test_budgets_listed_and_within_eight_minutes():
    r, _ = run({}, "--list")
    assert r.returncode == 0
    rows = dict(line.split() for line in r.stdout.strip().splitlines())
    assert list(rows)[:-1] == STAGES
    budgets = [int(rows[s].rstrip("s")) for s in STAGES]
    assert sum(budgets) == int(rows["total"].rstrip("s")) <= 480


def test_failing_build_does_not_stop_the_next_stages(tmp_path):
    out = tmp_path / "out"
    stages_dir = tmp_path / "stages"
    env = {
        "OUT": str(out),
        "GPU_CHECK_FAKE_GPU": "1",
        "GPU_CHECK_STAGES_DIR": str(stages_dir),
        "GPU_CHECK_BUDGET_ext_tests": "8",
    }
    for s in STAGES:
        env[f"GPU_CHECK_CMD_{s}"] = f"echo ran {s} with budget $BUDGET_S"
    env["GPU_CHECK_CMD_build"] = "echo compiling; echo 'error: nvcc exploded' >&2; exit 3"
    env["GPU_CHECK_CMD_ext_tests"] = "echo started; sleep 60"  # outlives its 8 s budget
    r, secs = run(env, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr  # build and ext_tests failed
    assert secs < 30  # the sleeping stage was cut at its budget
    assert "TEST MODE" in r.stdout

    status = {}
    for n, s in enumerate(STAGES, 1):
        tag = f"{n:02d}_{s}"
        log = (stages_dir / f"{tag}.log").read_text()
        status[s] = (stages_dir / f"{tag}.status").read_text().strip()
        assert status[s].startswith(f"{s} rc=") and "TEST MODE" in status[s] and "injected" in status[s]
        if s not in ("build", "ext_tests"):
            assert f"ran {s} with budget" in log and "result=ok" in status[s]
    assert "rc=3" in status["build"] and "result=FAILED" in status["build"]
    assert "nvcc exploded" in (stages_dir / "03_build.log").read_text()
    assert "result=TIMEOUT" in status["ext_tests"] and "started" in (stages_dir / "04_ext_tests.log").read_text()
    # Every stage after the failed build still ran, each with its own budget.
    assert "ran bench_ops with budget 100" in (stages_dir / "06_bench_ops.log").read_text()

    card = "testmode"
    summary = (out / f"summary_{card}.txt").read_text().strip().splitlines()
    assert summary == [status[s] for s in STAGES]
    with tarfile.open(out / f"gpu_check_{card}.tar.gz") as tar:
        names = {pathlib.PurePath(m).name for m in tar.getnames()}
    assert {f"{n:02d}_{s}.{ext}" for n, s in enumerate(STAGES, 1) for ext in ("log", "status")} <= names


def test_only_runs_the_named_stages_in_order(tmp_path):
    env = {"OUT": str(tmp_path), "GPU_CHECK_FAKE_GPU": "1", "GPU_CHECK_STAGES_DIR": str(tmp_path / "st")}
    for s in STAGES:
        env[f"GPU_CHECK_CMD_{s}"] = "true"
    r, _ = run(env, "--only", "bench_ops,env")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (tmp_path / "summary_testmode.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["env", "bench_ops"]


@pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi: the stages would really run"
)
def test_real_stages_without_gpu_fail_rather_than_pass(tmp_path):
    # The real stage commands, forced past the GPU detection on a machine without one: each
    # must fail (no skipped-only test run, no CPU benchmark, counts as a pass).
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device: the stages would really run")
    r, _ = run({"OUT": str(tmp_path), "GPU_CHECK_FAKE_GPU": "1"}, timeout=400)
    assert r.returncode == len(STAGES), r.stdout[-3000:]
    lines = (tmp_path / "summary_testmode.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == STAGES
    assert all("result=ok" not in line and "injected" not in line for line in lines)


def test_budget_over_eight_minutes_is_refused():
    r, _ = run({"GPU_CHECK_BUDGET_env": "200", "GPU_CHECK_FAKE_GPU": "1"})
    assert r.returncode == 64 and "480" in r.stderr


# ------------------------------------------------------------------ the scripts its stages run
def run_script(args, tmp_path, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1]))
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_bench_ops_cpu_smoke(tmp_path):
    out = tmp_path / "ops.md"
    r = run_script(
        [
            str(SCRIPT.parent / "bench_ops.py"),
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--calls",
            "2",
            "--rounds",
            "1",
            "--no-compile",
            "--storage",
            "float32,float16",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "partial" not in text and "Copy bandwidth" in text
    rows = [line for line in text.splitlines() if line.startswith("| update")]
    assert {(row.split("|")[7].strip(), row.split("|")[6].strip()) for row in rows} == {
        ("reference (eager)", "float32"),
        ("reference (eager)", "float16"),
    } | ({("cpu", "float32"), ("cpu", "float16")} if "cpu" in text.split("Backends available on cpu:")[1] else set())


def test_bench_ops_budget_lists_what_did_not_run(tmp_path):
    out = tmp_path / "ops.md"
    r = run_script(
        [
            str(SCRIPT.parent / "bench_ops.py"),
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--no-compile",
            "--budget-s",
            "0",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_text().count("not run: --budget-s 0 reached") == 2  # one update case, one epoch step


def test_bench_train_step_smoke(tmp_path):
    out = tmp_path / "train_step.md"
    r = run_script(
        [
            str(SCRIPT.parent / "bench_train_step.py"),
            "--device",
            "cpu",
            "--model",
            "small",
            "--batch",
            "4",
            "--size",
            "32",
            "--samples",
            "500",
            "--classes",
            "10",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("SMOKE TEST WITH A SMALL FALLBACK CNN, NOT RESNET-50.")
    assert "step with tracker.update" in text and "Tracker's share of the step" in text


def test_bench_train_step_skips_without_torchvision(tmp_path):
    pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is installed")
    except ImportError:
        pass
    r = run_script(
        [str(SCRIPT.parent / "bench_train_step.py"), "--device", "cpu", "--out", str(tmp_path / "t.md")], tmp_path
    )
    assert r.returncode == 0 and "skipped: torchvision is not installed" in r.stdout
    assert not (tmp_path / "t.md").exists()
