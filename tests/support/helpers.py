"""Shared test utilities: backends to parametrize over, feeding epochs, snapshots of state."""

import math
import os
import warnings

import numpy as np
import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.ops import registry

from tests.support.paths import REPO

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    CPU_BACKENDS = tk.available_backends("cpu")  # triton only under TRITON_INTERPRET=1 (conftest)
FAST_CPU_BACKENDS = [b for b in CPU_BACKENDS if b != "triton"]  # for larger shapes


def make_tracker(backend="reference", **kw):
    return tk.TDDSTracker(backend=backend, **kw)


def feed(tracker, epochs):
    """epochs: list of lists of (logits, index) numpy/torch batches; ends every epoch."""
    for batches in epochs:
        for logits, index in batches:
            tracker.update(torch.as_tensor(logits), torch.as_tensor(index))
        tracker.end_epoch()


def snapshot(tracker):
    """Every piece of tracker state, for 'nothing changed' and 'bit-identical' checks."""
    sd = tracker.state_dict()
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
        else:
            assert a[k] == b[k], k


def random_epochs(rng, n, c, t, p_missing=0.0, p_dup=0.0, p_nonfinite=0.0, max_batch=7, scale=3.0):
    """Random epochs in shuffled, randomly split batches, with missing/duplicate/non-finite rows.

    Logits drift over epochs like training (a per-sample random walk), so d varies.
    """
    base = rng.normal(size=(n, c)).astype(np.float32) * scale
    epochs = []
    for _ in range(t):
        base = base + rng.normal(size=(n, c)).astype(np.float32)
        keep = np.nonzero(rng.random(n) >= p_missing)[0]
        dups = keep[rng.random(keep.size) < p_dup]
        idx = rng.permutation(np.concatenate([keep, dups]))
        logits = base[idx] + rng.normal(size=(idx.size, c)).astype(np.float32) * 0.1
        bad = rng.random(idx.size) < p_nonfinite
        logits[bad, rng.integers(0, c, size=bad.sum())] = rng.choice([np.nan, np.inf, -np.inf], bad.sum())
        cuts = np.sort(rng.integers(0, idx.size + 1, size=rng.integers(0, max(1, idx.size // max_batch) + 2)))
        pieces = np.split(np.arange(idx.size), cuts)
        epochs.append([(logits[p], idx[p].astype(np.int64)) for p in pieces])
    return epochs


# ------------------------------------------------------------------ (device, backend) pairs
CUDA = torch.cuda.is_available()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    CUDA_BACKENDS = tk.available_backends("cuda") if CUDA else []


def backend_cases(include=None, exclude=()):
    """Every (device, backend) pair the backend table declares (tdds_kernels/ops/registry.py
    BACKENDS) as a pytest param with id "device-backend": the CPU backends of this build (triton
    interpreted), and reference/triton/cuda on a GPU, skipped (never faked) where there is no GPU
    or the backend is not built. `include`: backend names to keep; `exclude`: ids
    ("cpu-reference") to leave out."""
    params = []
    for device, available in (("cpu", CPU_BACKENDS), ("cuda", CUDA_BACKENDS)):
        for spec in registry.BACKENDS:
            name = spec.name
            if device not in spec.devices or (include is not None and name not in include):
                continue
            if f"{device}-{name}" in exclude:
                continue
            marks = []
            if device == "cuda" and not CUDA:
                marks.append(pytest.mark.skip(reason="no CUDA GPU"))
            elif name not in available:
                marks.append(pytest.mark.skip(reason=f"backend {name!r} is not available on {device}"))
            params.append(pytest.param((device, name), id=f"{device}-{name}", marks=marks))
    return params


# ------------------------------------------------------------------ op state
def make_state(n, c, w, storage=torch.float32, epoch=1, seed=0):
    """(prev, seen, ring, score, counters) on CPU: prev holds real cached log-softmax rows; seen
    mixes never (-1), stale (e-2), the previous epoch (e-1: d is defined) and this epoch (e: a
    duplicate); ring has NaN holes; counters are non-zero (kernels add to them)."""
    g = torch.Generator().manual_seed(seed)
    prev = torch.log(torch.softmax(torch.randn(n, c, generator=g) * 3, dim=1) + 1e-8).to(storage)
    choices = torch.tensor([-1, epoch - 2, epoch - 1, epoch], dtype=torch.int32).clamp(min=-1)
    seen = choices[torch.randint(0, 4, (n,), generator=g)]
    ring = torch.rand(n, w - 1, generator=g) * 5
    ring[torch.rand(n, w - 1, generator=g) < 0.3] = float("nan")
    score = torch.rand(n, generator=g)
    counters = torch.tensor([3, 5, 7, 11, epoch], dtype=torch.int64)
    return prev, seen, ring, score, counters


def probability_sweep(c=1000, seed=0):
    """Logit rows whose probabilities sweep 1e-12..1 densely, so a kernel's exp and log see their
    whole input range (p + eps covers [1e-8, 1], x - max covers [-27.6, 0]); then rows whose
    logits span far beyond exp's range (it underflows through the subnormals to 0; logits 3e38
    apart make x - max overflow to -inf) and a row with p = 1 to float precision. Columns are
    shuffled per row, so every value meets both whole vectors and a row's tail."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(math.log(1e-12), 0.0, c)
    dense = grid + torch.rand(12, c, generator=g) * float(grid[1] - grid[0])  # 12 shifted copies
    wide = torch.stack([torch.linspace(-120.0, 0.0, c), torch.linspace(-1e4, 0.0, c), torch.randn(c, generator=g)])
    wide[2, :2] = torch.tensor([3e38, -3e38])
    peak = torch.full((1, c), -40.0)
    peak[0, 0] = 0.0
    z = torch.cat([dense, wide, peak])
    return torch.gather(z, 1, torch.argsort(torch.rand(z.shape, generator=g), 1))


def clone(ts):
    return tuple(t.clone() for t in ts)


# Examples run in tests (tests/app): this checkout's package, one thread, gloo on loopback.
EXAMPLE_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "GLOO_SOCKET_IFNAME": "lo",
    "PYTHONWARNINGS": "ignore",
    # The subprocesses import this checkout's package, whatever else is installed.
    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
}


def load_example(name):
    """examples/<name>.py imported as a module (examples/ is not a package)."""
    import importlib.util

    module_name = name if name.endswith("_example") else f"{name}_example"
    spec = importlib.util.spec_from_file_location(module_name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun(script, *args, world=2, cwd=None):
    """Runs `script` under torchrun on `world` processes; its stdout. A run must succeed."""
    import subprocess
    import sys

    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    proc = subprocess.run(
        [str(c) for c in [*launch, script, *args]],
        env=EXAMPLE_ENV,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    teardown_only = "terminate called without an active exception" in proc.stderr and (
        "stats:" in proc.stdout or "stopped at" in proc.stdout
    )  # see tests/app/test_examples.run
    assert proc.returncode == 0 or teardown_only, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_module():
    """Autouse in a module that imports it: tiny models, where threads only contend on the shared
    CI cores (and in-process runs would vary)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cuda_backend_or_skip(name: str):
    """Backend `name`'s ops on CUDA, or skip saying why it is unavailable (TDDS_REQUIRE_EXT=1
    turns a missing `cuda` extension into a failure: a GPU run that must test it)."""
    reason = registry._auto_reason(name, torch.device("cuda"))
    if reason is not None:
        if name == "cuda" and os.environ.get("TDDS_REQUIRE_EXT") == "1":
            pytest.fail(f"backend 'cuda': {reason}")
        pytest.skip(f"backend {name!r}: {reason}")
    return registry.resolve(name, torch.device("cuda"))
