"""TDDS scores from a plain PyTorch training loop, then a pruned coreset.

    python examples/plain_loop.py [--epochs 8] [--out scores.pt]

A small synthetic 10-class problem with 10% flipped labels trains on CPU in a few seconds. The
tracker sees each batch's logits with the batch's dataset indices (IndexedDataset adds them).
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import tdds_kernels as tk


def synthetic(n=1024, classes=10, dim=16, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    flipped = torch.rand(n, generator=g) < noise
    y = torch.where(flipped, torch.randint(0, classes, (n,), generator=g), y)
    return TensorDataset(x, y), flipped


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="torch.save the scores here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    data, flipped = synthetic()
    loader = DataLoader(tk.IndexedDataset(data), batch_size=64, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tracker = tk.TDDSTracker(num_samples=len(data), num_classes=10, window=args.window, trajectory_len=args.epochs)

    for epoch in range(args.epochs):
        for x, y, idx in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.update(logits.detach(), idx)
        tracker.end_epoch()
        print(f"epoch {epoch}: loss {loss.item():.3f}")

    scores = tracker.scores()
    kept = tk.select(scores, prune_fraction=args.prune)
    print(
        f"kept {len(kept)} of {len(data)} samples; flipped labels among them: "
        f"{flipped[kept].float().mean():.1%} (dataset: {flipped.float().mean():.1%})"
    )
    print("stats:", tracker.stats)
    if args.out:
        torch.save(scores, args.out)


if __name__ == "__main__":
    main()
