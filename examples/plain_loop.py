"""TDDS scores from a plain PyTorch training loop, with resume, then a pruned coreset.

    python examples/plain_loop.py --ckpt /tmp/tdds_plain [--epochs 8] [--out scores.pt]
    # stopped (Ctrl-C, a crash, --stop-after)? the same command resumes from the last completed
    # epoch, and the scores are those of an uninterrupted run

A small synthetic 10-class problem with 10% flipped labels trains on CPU in a few seconds. The
tracker sees each batch's logits with the batch's dataset indices (IndexedDataset adds them).
"""

import argparse
import os

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
    ap.add_argument("--ckpt", default=None, help="folder for the resumable state (model, optimizer, tracker)")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this epoch (to try a resume)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    data, flipped = synthetic()
    # The shuffle draws from its own generator, seeded per epoch: a resumed epoch sees the same
    # batches as it would have in one run.
    order = torch.Generator()
    loader = DataLoader(tk.IndexedDataset(data), batch_size=64, shuffle=True, generator=order)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    start, tracker_path = 0, os.path.join(args.ckpt, "tdds.pt") if args.ckpt else None
    if tracker_path and os.path.exists(tracker_path):
        tracker = tk.TDDSTracker.load(tracker_path)
        start = tracker.epoch  # epochs closed by the tracker = epochs trained
        state = torch.load(os.path.join(args.ckpt, f"model-{start}.pt"))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        print(f"resumed at epoch {start}")
    else:
        tracker = tk.TDDSTracker(num_samples=len(data), num_classes=10, window=args.window, trajectory_len=args.epochs)

    for epoch in range(start, args.epochs):
        order.manual_seed(epoch)
        for x, y, idx in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.update(logits.detach(), idx)
        tracker.end_epoch()
        if args.ckpt:
            os.makedirs(args.ckpt, exist_ok=True)
            # The weights are named by epoch count and the tracker's epoch names them: a crash
            # between the two saves leaves a tracker that still matches the weights it points to.
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict()}, os.path.join(args.ckpt, f"model-{epoch + 1}.pt")
            )
            tracker.save(tracker_path)  # atomic
            if os.path.exists(old := os.path.join(args.ckpt, f"model-{epoch}.pt")):
                os.remove(old)
        print(f"epoch {epoch}: loss {loss.item():.3f}")
        if args.stop_after is not None and epoch == args.stop_after:
            return

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
