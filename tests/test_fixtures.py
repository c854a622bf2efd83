"""Conformance: the release-format fixtures, fed in shuffled batches, give the expected scores.

expected_scores.npy was computed in float64 end to end; the contract's float32 softmax leaves
~1e-7 absolute error per contribution, so tiny scores get an absolute floor (atol) besides
rtol 1e-5.
"""
import json

import numpy as np
import pytest
import torch

import tdds_kernels as tk
from conftest import FIXTURES
from helpers import FAST_CPU_BACKENDS

# Every fast backend on CPU, and every backend on CUDA where a GPU exists (skipped, never faked).
CUDA = torch.cuda.is_available()
CASES = [("cpu", b) for b in FAST_CPU_BACKENDS] + [
    pytest.param("cuda", b, marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU"))
    for b in ("reference", "triton", "cuda")]

NAMES = ["small_c10", "medium_c100"]
pytestmark = [pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}"),
              pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")]


def load_fixture(name):
    d = FIXTURES / name
    params = json.loads((d / "params.json").read_text())
    epochs = [(np.load(d / f"{t}_Output.npy"), np.load(d / f"{t}_Index.npy"))
              for t in range(params["trajectory_len"])]
    return params, epochs, np.load(d / "expected_scores.npy")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_fixture_scores(name, device, backend, seed):
    if device == "cuda" and backend not in tk.available_backends("cuda"):
        pytest.skip(f"backend {backend!r} is not available on cuda")
    params, epochs, expected = load_fixture(name)
    rng = np.random.default_rng(seed)
    tracker = tk.TDDSTracker(params["num_samples"], params["num_classes"], window=params["window_size"],
                             decay=params["decay"], trajectory_len=params["trajectory_len"], device=device,
                             backend=backend)
    for logits, index in epochs:
        order = rng.permutation(len(index))  # the loader's order must not matter
        cuts = np.sort(rng.choice(np.arange(1, len(index)), size=rng.integers(1, 12), replace=False))
        for part in np.split(order, cuts):
            tracker.update(torch.from_numpy(logits[part]).to(device), torch.from_numpy(index[part]).to(device))
        tracker.end_epoch()
    assert tracker.complete
    scores = tracker.scores().cpu().double()
    torch.testing.assert_close(scores, torch.from_numpy(expected), rtol=1e-5, atol=2e-6)
    # Same ranking where scores are not within rounding of each other: the kept sets agree.
    for frac in (0.3, 0.7, 0.9):
        a = set(tk.select(scores, prune_fraction=frac).tolist())
        b = set(tk.select(torch.from_numpy(expected), prune_fraction=frac).tolist())
        assert len(a ^ b) <= 2, (frac, len(a ^ b))
