"""The demo's recipe: a small 1D CNN with batch norm, SGD (Nesterov) with a cosine schedule."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_tracker(args, num_samples: int, num_classes: int):
    """The demo's tracker from its options (-W, --decay, -T, --backend)."""
    from ..core.tracker import TDDSTracker

    with warnings.catch_warnings():  # "using the reference backend": fine at this size
        warnings.simplefilter("ignore", UserWarning)
        return TDDSTracker(
            num_samples,
            num_classes,
            window=args.window,
            decay=args.decay,
            trajectory_len=args.trajectory_len,
            backend=args.backend,
        )


def make_model(in_channels: int, num_classes: int, width: int = 32) -> nn.Module:
    """3 conv layers with batch norm, global average pooling, a linear head (~9k parameters)."""

    def block(cin, cout, k, stride):
        return [nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm1d(cout), nn.ReLU()]

    wide = width * 3 // 2
    return nn.Sequential(
        *block(in_channels, width, 5, 1),
        *block(width, width, 3, 2),
        *block(width, wide, 3, 2),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(wide, num_classes),
    )


def random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each sample by a random offset in [-shift, shift] positions, filling with zeros."""
    b, _, length = x.shape
    offset = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    return F.pad(x, (shift, shift)).unfold(2, length, 1)[torch.arange(b), :, offset]


def train(
    x,
    y,
    num_classes: int,
    epochs: int,
    seed: int,
    shift: int = 0,
    batch_size: int = 100,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    tracker=None,
    weights=None,
    on_epoch=None,
):
    """Train a fresh model on (x, y); returns it in eval mode.

    `tracker`: fed every batch's training logits with dataset indices and targets (the full-data
    run). `weights`: (N,) per-sample weights; each batch's loss is scaled by their batch mean, as
    the release's retraining does. `on_epoch(samples)` is called after every epoch.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_model(x.shape[1], num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb = random_shift(x[idx], shift, gen) if shift else x[idx]
            out = model(xb)
            loss = F.cross_entropy(out, y[idx])
            if weights is not None:
                loss = loss * weights[idx].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if tracker is not None:
                tracker.update(out.detach(), idx, targets=y[idx])
        if tracker is not None:
            tracker.end_epoch()
        if on_epoch is not None:
            on_epoch(len(x))
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 2000) -> float:
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / len(y)
