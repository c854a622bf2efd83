"""Demo datasets that need no download: MNIST-1D (generated) and scikit-learn's digits (bundled)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .options import DATASETS


@dataclass
class Split:
    x: torch.Tensor  # (N, channels, length) float32
    y: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    default_shift: int  # positions of the random-shift augmentation that suit the data


def _standardize(x: np.ndarray, x_test: np.ndarray):
    mean, std = x.mean(), x.std()
    return (x - mean) / std, (x_test - mean) / std


def load(name: str, num_samples: int | None = None, seed: int = 42) -> Split:
    """`num_samples`: MNIST-1D's total before its 80/20 split (25,000 → 20k train / 5k test);
    digits: the first num_samples of a fixed shuffle of its 1,797 scans (None = all), 80/20."""
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset  # get_dataset would download

        args = get_dataset_args()
        args.num_samples, args.seed = int(num_samples or 25000), seed
        d = make_dataset(args)
        x, xt = d["x"].astype(np.float32), d["x_test"].astype(np.float32)
        return Split(
            torch.from_numpy(x)[:, None],
            torch.from_numpy(d["y"]).long(),
            torch.from_numpy(xt)[:, None],
            torch.from_numpy(d["y_test"]).long(),
            10,
            4,
        )
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        order = np.random.default_rng(seed).permutation(len(d.target))[:num_samples]
        x, y = d.images[order].astype(np.float32), d.target[order]
        cut = int(0.8 * len(y))
        # Rows as channels, columns as the sequence: the 1D CNN convolves along each scan line.
        x, xt = _standardize(x[:cut], x[cut:])
        return Split(
            torch.from_numpy(x),
            torch.from_numpy(y[:cut]).long(),
            torch.from_numpy(xt),
            torch.from_numpy(y[cut:]).long(),
            10,
            1,
        )
    raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")
