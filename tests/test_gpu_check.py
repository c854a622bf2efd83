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
    assert "ran bench_ops with budget 125" in (stages_dir / "06_bench_ops.log").read_text()

    card = "testmode"
    summary = (out / f"summary_{card}.txt").read_text().strip().splitlines()
    assert summary == [status[s] for s in STAGES]
    with tarfile.open(out / f"gpu_check_{card}.tar.gz") as tar:
        names = {pathlib.PurePath(m).name for m in tar.getnames()}
    assert {f"{n:02d}_{s}.{ext}" for n, s in enumerate(STAGES, 1) for ext in ("log", "status")} <= names


def test_budgets_are_written_down_stage_by_stage():
    # The header's table of budgets is the one the script runs with.
    r, _ = run({}, "--list")
    listed = dict(line.split() for line in r.stdout.strip().splitlines())
    header = [line[1:].split() for line in SCRIPT.read_text().splitlines() if line.startswith("#   ")]
    documented = {row[0]: row[1] for row in header if len(row) > 1 and row[0] in STAGES}
    assert {s: f"{documented[s]}s" for s in STAGES} == {s: listed[s] for s in STAGES}
    assert "480" in SCRIPT.read_text().split("set -uo pipefail")[0]


def fake_tools(tmp_path):
    """A python and a compute-sanitizer that only log their arguments (one line per call)."""
    log = tmp_path / "calls.log"
    for name in ("python", "compute-sanitizer"):
        tool = tmp_path / name
        # "1 passed": what run_pytest looks for in pytest's last lines (an all-skipped run fails)
        tool.write_text(f'#!/bin/bash\necho "{name} $*" >>"{log}"\necho "1 passed"\n')
        tool.chmod(0o755)
    return log


def test_real_stages_dry_run_with_fake_tools(tmp_path):
    # The real stage functions (bar build, which replaces the extension in place) with a python
    # and a compute-sanitizer that only log: what each stage would run, and where it writes.
    log = fake_tools(tmp_path)
    out = tmp_path / "out"
    env = {
        "OUT": str(out),
        "GPU_CHECK_FAKE_GPU": "1",
        "PYTHON": str(tmp_path / "python"),
        "GPU_CHECK_SANITIZER": str(tmp_path / "compute-sanitizer"),
        "GPU_CHECK_CMD_build": "echo build injected",
        "GPU_CHECK_STAGES_DIR": str(tmp_path / "stages"),
    }
    r, _ = run(env, timeout=120)
    calls = log.read_text().splitlines()
    summary = (out / "summary_testmode.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary] == STAGES
    for line in summary[1:]:
        assert "result=ok" in line, r.stdout[-3000:]

    # ext_tests: only what the build adds (checked by collecting its selection below).
    ext = [c for c in calls if c.startswith("python -m pytest") and "test_extension_cuda.py" in c]
    assert len(ext) == 1
    # sanitize: memcheck on both kernel sets, racecheck on the Triton kernels, and on the
    # extension's exactly when one of its kernels uses shared memory (else its log says why not).
    sanitized = [
        c.split("--tool ")[1].split()[0] + " " + c.split("--backend ")[1].split()[0] for c in calls if "--tool" in c
    ]
    shared = any("__shared__" in p.read_text() for p in (SCRIPT.parents[1] / "csrc" / "cuda").glob("*.cu"))
    assert sanitized == ["memcheck cuda", "memcheck triton", "racecheck triton"] + ["racecheck cuda"] * shared
    assert shared or "use no shared memory" in (tmp_path / "stages" / "05_sanitize.log").read_text()
    # Every table lands under $OUT.
    for script, table in (
        ("bench_ops.py", "ops_testmode.md"),
        ("bench_targets.py", "targets_testmode.md"),
        ("bench_train_step.py", "train_step_testmode.md"),
        ("bench_topk.py", "topk_testmode.md"),
    ):
        (call,) = [c for c in calls if script in c]
        assert f"--out {out / table}" in call and "--device cuda" in call and "--budget-s" in call
    assert (out / "gpu_check_testmode.tar.gz").exists()


def test_ext_tests_select_the_cuda_backend_and_extension_tests_only():
    # What stage_ext_tests passes to pytest, collected here: no reference (triton_tests ran
    # those on CUDA already), no triton and no CPU case; the cuda-backend cases and the
    # extension / runtime / capture tests all there.
    text = SCRIPT.read_text()
    files = text.split("EXT_TEST_FILES=(")[1].split(")")[0].split()
    k = text.split('EXT_TEST_K="')[1].split('"')[0]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files, "-k", k],
        cwd=SCRIPT.parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert r.returncode == 0 and ids, r.stdout[-2000:] + r.stderr[-2000:]
    # Parametrized cases of the suites run over every (backend, device) pair name their pair;
    # the CUDA-only files (their tests skip without a GPU) need not.
    cuda_only = ("test_extension_cuda", "test_cuda_runtime", "test_capture", "test_cuda_large_offsets")
    params = [i.split("[", 1)[1] for i in ids if "[" in i and not any(f"/{f}.py" in i for f in cuda_only)]
    assert not [i for i in ids if "triton" in i or "cuda-reference" in i or "cpu-" in i]
    assert all("cuda" in p for p in params if not p.startswith(("False", "True")))
    names = {i.split("[")[0] for i in ids}
    for must in (
        "tests/ops/test_conformance_update.py::test_update_matches_reference",
        "tests/ops/test_determinism.py::test_cuda_first_occurrence_wins_on_every_run",
        "tests/ops/test_extension_cuda.py::test_cuda_graph_capture_and_replay_across_epochs",
        "tests/ops/test_cuda_runtime.py::test_training_step_graph_replays_across_epochs",
        "tests/core/test_capture.py::test_captured_step_of_a_warmed_up_tracker_replays_like_eager",
        "tests/ops/test_cuda_large_offsets.py::test_rows_past_two_to_the_31_elements",
    ):
        assert must in names, must
    conformance = [i for i in ids if "test_conformance" in i]
    assert conformance and all("cuda-cuda" in i for i in conformance)


def wait_gone(pids, seconds=3.0):
    """The pids still running after up to `seconds` (SIGKILL is sent when a stage ends)."""
    deadline = time.monotonic() + seconds
    while (alive := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_nothing_of_a_stage_runs_on_after_it(tmp_path):
    # A stage that leaves a process behind in its group (a background job, or a tool whose own
    # timeout let its child live): killed when the stage ends, before the next stage starts.
    pids = tmp_path / "pids"
    env = {"OUT": str(tmp_path / "out"), "GPU_CHECK_FAKE_GPU": "1"}
    for s in STAGES:
        env[f"GPU_CHECK_CMD_{s}"] = "true"
    env["GPU_CHECK_CMD_env"] = f'sleep 300 & echo $! >"{pids}"'
    # The next stage looks (a killed process may linger as a zombie, waiting to be reaped).
    env["GPU_CHECK_CMD_triton_tests"] = (
        f'for p in $(cat "{pids}"); do grep -qs "^State:[[:space:]]*[^Z[:space:]]" /proc/$p/status '
        '&& echo "LEFT""OVER $p"; done; true'
    )
    r, _ = run(env, "--only", "env,triton_tests", timeout=60)
    assert r.returncode == 0, r.stdout
    assert "LEFTOVER" not in r.stdout and not wait_gone(pids.read_text().split(), 0)


def test_stage_limit_reaches_a_sanitizer_under_its_own_timeout(tmp_path):
    # The real sanitize stage, whose compute-sanitizer runs under a timeout of its own; here it
    # hangs, ignoring SIGINT and SIGTERM, with a child of its own. When the stage's limit comes,
    # nothing of it may run on into the next stage.
    pids = tmp_path / "pids"
    sanitizer = tmp_path / "compute-sanitizer"
    sanitizer.write_text(
        f'#!/bin/bash\ntrap \'\' INT TERM\nsleep 300 &\necho $! >>"{pids}"\necho $$ >>"{pids}"\nsleep 300\n'
    )
    sanitizer.chmod(0o755)
    env = {
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_FAKE_GPU": "1",
        "GPU_CHECK_SANITIZER": str(sanitizer),
        "GPU_CHECK_BUDGET_sanitize": "16",
        "PYTHON": sys.executable,
    }
    r, secs = run(env, "--only", "sanitize", timeout=120)
    assert secs < 40, r.stdout
    assert "result=ok" not in (tmp_path / "out" / "summary_testmode.txt").read_text()
    assert pids.read_text().split()
    alive = wait_gone(pids.read_text().split())
    assert not alive, f"still running after the stage: {alive}"


def running(pid: str) -> bool:
    """Whether process `pid` exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
