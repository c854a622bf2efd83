"""TrackerConfig and device handling: one declaration, validated once, every spelling accepted."""

import dataclasses

import numpy as np
import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.core.config import TrackerConfig, resolve_device

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")


def test_numpy_numbers_are_accepted_and_normalized():
    # A dataset length from numpy and a decay from a config file in float32.
    tr = tk.TDDSTracker(
        np.int64(50), np.int32(4), window=np.int64(3), decay=np.float32(0.9), trajectory_len=np.int16(5)
    )
    assert (tr.num_samples, tr.num_classes, tr.window, tr.trajectory_len) == (50, 4, 3, 5)
    assert all(type(v) is int for v in (tr.num_samples, tr.num_classes, tr.window, tr.trajectory_len))
    assert type(tr.decay) is float and tr.decay == pytest.approx(0.9)
    assert tr.config == TrackerConfig(50, 4, 3, float(np.float32(0.9)), 5)


def test_window_2_is_refused_with_the_reason():
    with pytest.raises(
        ValueError,
        match=r"window: expected an int >= 3, got 2 \(a window of 2 epochs holds one "
        r"transition.*always 0",
    ) as info:
        tk.TDDSTracker(10, 3, window=2)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(num_samples=np.float64(5.0)), TypeError, "num_samples: expected an int, got float64"),
        (dict(num_samples=True), TypeError, "num_samples: expected an int, got bool"),
        (dict(decay=np.float32(1.5)), ValueError, "decay: expected a float in"),
        (dict(window=4, trajectory_len=np.int64(3)), ValueError, r"trajectory_len: expected >= window \(4\)"),
    ],
)
def test_bad_numbers_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tk.TDDSTracker(**(dict(num_samples=5, num_classes=3, window=3, trajectory_len=4) | kwargs))


def test_config_roundtrips_through_its_checkpoint_form():
    cfg = TrackerConfig(7, 4, 3, 0.5, None, torch.bfloat16)
    d = cfg.to_dict()
    assert d == {
        "num_samples": 7,
        "num_classes": 4,
        "window": 3,
        "decay": 0.5,
        "trajectory_len": None,
        "storage_dtype": "bfloat16",
    }
    assert TrackerConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="ckpt: storage_dtype: unsupported 'float64'"):
        TrackerConfig.from_dict(dict(d, storage_dtype="float64"), "ckpt")
    with pytest.raises(ValueError, match="ckpt: window: expected an int >= 3"):
        TrackerConfig.from_dict(dict(d, window=2), "ckpt")
    with pytest.raises(ValueError, match=r"ckpt: expected the keys .* unknown \['windows'\]"):
        TrackerConfig.from_dict(dict(d, windows=3), "ckpt")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.window = 5


def test_repr_shows_the_config():
    r = repr(tk.TDDSTracker(5, 3, window=3, trajectory_len=4, backend="reference"))
    assert r.startswith(
        "TDDSTracker(num_samples=5, num_classes=3, window=3, decay=0.9, trajectory_len=4, "
        "storage_dtype=torch.float32, device='cpu', backend='reference'"
    )


@pytest.mark.parametrize("spelling", ["cpu", "cpu:0", torch.device("cpu"), torch.device("cpu", 0)])
def test_every_spelling_of_the_cpu_is_the_cpu(spelling):
    assert resolve_device(spelling) == torch.device("cpu")
    tr = tk.TDDSTracker(6, 3, window=3, trajectory_len=3, device=spelling, backend="reference")
    assert tr.device == torch.device("cpu")
    # Batches on "cpu" feed a tracker made on "cpu:0" (torchrun / Accelerate / HF hand out cpu:0).
    tr.update(torch.randn(6, 3, device=spelling), torch.arange(6, device=spelling))
    tr.update(torch.randn(2, 3), torch.tensor([0, 1]))
    assert tr.stats["duplicates"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("spelling", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_one_line_naming_device(spelling):
    with pytest.raises(
        ValueError,
        match=r"^device: expected a device this machine has, got 'cuda(:0)?' "
        r"\(torch.cuda.is_available\(\) is False\)$",
    ):
        tk.TDDSTracker(6, 3, window=3, device=spelling)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_spellings_are_the_current_device():
    current = torch.device("cuda", torch.cuda.current_device())
    for spelling in ("cuda", f"cuda:{current.index}", current):
        assert resolve_device(spelling) == current
    with pytest.raises(ValueError, match="device: expected cuda:0"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_unknown_device_names_device():
    with pytest.raises(ValueError, match="^device: expected a torch.device or a string"):
        tk.TDDSTracker(6, 3, window=3, device="gpu")


def test_on_nonfinite_is_validated_on_assignment():
    tr = tk.TDDSTracker(6, 3, window=3, backend="reference")
    tr.on_nonfinite = "skip"
    assert tr.on_nonfinite == "skip"
    for bad in ("errors", "Skip", None):
        with pytest.raises(ValueError, match="on_nonfinite: expected one of"):
            tr.on_nonfinite = bad
        assert tr.on_nonfinite == "skip"
    assert tr.state_dict()["on_nonfinite"] == "skip"
