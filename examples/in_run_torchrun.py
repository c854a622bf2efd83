"""Prune inside the run that scores, under torchrun: a sharded tracker and tk.PruningSampler.

    torchrun --standalone --nproc_per_node=2 examples/in_run_torchrun.py --ckpt /tmp/in_run
    # --stop-after-step K exits after K steps (mid-epoch); the same command resumes

The sampler replaces DistributedSampler: before the switch it yields DistributedSampler's order;
from epoch T on every rank takes its share of the kept set, which every rank computes from the
same collective scores() (N floats, never the N × C state) and checks against the others. Every
rank calls set_epoch and tracker.update every step. The sampler's state is the same on every
rank, so rank 0 saves it with the model; the tracker writes one shard per rank.
"""

import argparse
import glob
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

import tdds_kernels as tk
from tdds_kernels.integrations.loop import load_tracker, make_tracker


def synthetic(n=1001, classes=10, dim=16, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    flipped = torch.rand(n, generator=g) < noise
    return x, torch.where(flipped, torch.randint(0, classes, (n,), generator=g), y)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--trajectory-len", type=int, default=4)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--strategy", default="top")
    ap.add_argument("--ckpt", default=None, help="folder for the resumable state")
    ap.add_argument("--stop-after-step", type=int, default=None)
    ap.add_argument("--out", default=None, help="rank 0 saves scores, kept set and its batches here")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    x, y = synthetic()
    data = TensorDataset(x, y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(device)
    model = DDP(net, device_ids=[device.index] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    state_path = os.path.join(args.ckpt, "state.pt") if args.ckpt else None
    start, step, batches, resume = 0, 0, [], None
    if state_path and os.path.exists(state_path):
        resume = torch.load(state_path, map_location=device, weights_only=False)
        tracker = load_tracker(os.path.join(args.ckpt, f"tdds-{resume['step']}.pt"), device=device, backend="auto")
    else:
        tracker = make_tracker(len(data), 10, device=device, window=args.window, trajectory_len=args.trajectory_len)
    sampler = tk.PruningSampler(tracker, args.prune, strategy=args.strategy, labels=y, seed=0, dataset=data)
    loader = DataLoader(tk.IndexedDataset(data), batch_size=32, sampler=sampler)
    plan = sampler.schedule(args.epochs, batch_size=32)  # per rank
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=plan.total_steps)
    if resume is not None:
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        sampler.load_state_dict(resume["sampler"])
        start, step, batches = resume["epoch"], resume["step"], resume["batches"]
        if rank == 0:
            print(f"resumed at epoch {start}, step {step}")

    def save(epoch):
        os.makedirs(args.ckpt, exist_ok=True)
        tracker.save(os.path.join(args.ckpt, f"tdds-{step}.pt"))  # collective: a shard per rank
        if rank == 0:  # written last: it names the tracker files it goes with
            state = {"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
            state.update(sampler=sampler.state_dict(), epoch=epoch, step=step, batches=batches)
            torch.save(state, state_path + ".tmp")
            os.replace(state_path + ".tmp", state_path)
            for old in glob.glob(os.path.join(args.ckpt, "tdds-*.pt.*")):  # earlier saves' shards
                if not old.startswith(os.path.join(args.ckpt, f"tdds-{step}.pt.")):
                    os.remove(old)
        dist.barrier()

    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)  # every rank; the kept set is chosen here at the switch
        if epoch == plan.switch_epoch and rank == 0:
            print(f"epoch {epoch}: kept {len(sampler.kept)} of {len(data)}")
        for xb, yb, idx in loader:
            xb, yb, idx = xb.to(device), yb.to(device), idx.to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tracker.update(logits.detach(), idx)  # collective until complete, then a no-op
            step += 1
            batches.append(idx.tolist())
            if step == args.stop_after_step:
                save(epoch)
                if rank == 0:
                    print(f"stopped at step {step}")
                dist.barrier()
                dist.destroy_process_group()
                return
        tracker.end_epoch()
        if args.ckpt:
            save(epoch + 1)

    scores, stats = tracker.scores(), tracker.stats  # collectives
    if rank == 0:
        print(f"steps {step} of {plan.total_steps} per rank; kept {len(sampler.kept)}")
        print("stats:", stats)
        if args.out:
            torch.save({"scores": scores.cpu(), "kept": sampler.kept, "batches": batches}, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
