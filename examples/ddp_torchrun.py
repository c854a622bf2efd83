"""TDDS scores from a torch DDP loop launched with torchrun, sharded over the ranks, resumable.

    torchrun --standalone --nproc_per_node=2 examples/ddp_torchrun.py --ckpt /tmp/tdds_run
    # stopped? the same command resumes from the last completed epoch

Each rank holds the TDDS state of 1/world of the samples (n % world == rank). Every rank calls
tracker.update once per step with its own batch (DistributedSampler gives every rank the same
number of steps; its padding repeats a few samples, which the duplicate rule ignores) and
tracker.end_epoch once per epoch. At each epoch end every rank writes its tracker shard and rank 0
the model and optimizer, so a rerun continues where the last completed epoch left off. Uses NCCL
on GPUs, gloo on CPU.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import tdds_kernels as tk
from tdds_kernels.integrations.loop import checkpoint_exists, load_tracker, make_tracker


def synthetic(n=1001, classes=10, dim=16, noise=0.1, seed=0):
    # n odd: DistributedSampler pads the last round with a repeated sample (a duplicate)
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    flipped = torch.rand(n, generator=g) < noise
    return TensorDataset(x, torch.where(flipped, torch.randint(0, classes, (n,), generator=g), y))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--ckpt", default=None, help="folder for the resumable state (shared or per node)")
    ap.add_argument("--stop-after", type=int, default=None, help="exit after this epoch (to try resuming)")
    ap.add_argument("--out", default=None, help="rank 0 torch.saves the scores here")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    data = synthetic()
    sampler = DistributedSampler(tk.IndexedDataset(data), shuffle=True, seed=0)
    loader = DataLoader(tk.IndexedDataset(data), batch_size=32, sampler=sampler)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(device)
    model = DDP(net, device_ids=[device.index] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    start = 0
    tracker_path = os.path.join(args.ckpt, "tdds.pt") if args.ckpt else None
    if tracker_path and checkpoint_exists(tracker_path, device=device):
        tracker = load_tracker(tracker_path, device=device, backend="auto")
        start = tracker.epoch  # epochs closed by the tracker = epochs trained
        state = torch.load(os.path.join(args.ckpt, f"model-{start}.pt"), map_location=device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if rank == 0:
            print(f"resumed at epoch {start}")
    else:
        tracker = make_tracker(len(data), 10, device=device, window=args.window, trajectory_len=args.epochs)

    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)
        for x, y, idx in loader:
            x, y, idx = x.to(device), y.to(device), idx.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.update(logits.detach(), idx)  # collective: every rank, every step
        tracker.end_epoch()
        if args.ckpt:
            os.makedirs(args.ckpt, exist_ok=True)
            # The weights are named by epoch count and the tracker points at one of them: a crash
            # between the two saves leaves a tracker that still matches the weights it names.
            if rank == 0:
                torch.save(
                    {"model": net.state_dict(), "opt": opt.state_dict()},
                    os.path.join(args.ckpt, f"model-{epoch + 1}.pt"),
                )
            dist.barrier()
            tracker.save(tracker_path)  # one file per rank; returns once all are written
            if rank == 0 and os.path.exists(old := os.path.join(args.ckpt, f"model-{epoch}.pt")):
                os.remove(old)
        if rank == 0:
            print(f"epoch {epoch}: loss {loss.item():.3f}")
        if args.stop_after is not None and epoch == args.stop_after:
            break

    scores = tracker.scores()  # collective: the full (N,) vector on every rank
    stats = tracker.stats  # collective too: counts summed over the ranks
    if rank == 0:
        print(f"world {world}: {tracker!r}")
        print("stats:", stats)
        if args.out and tracker.complete:
            torch.save(scores.cpu(), args.out)
    dist.barrier()  # gloo aborts a rank that tears down while a peer is still connected
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
