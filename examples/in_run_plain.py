"""Prune inside the run that scores: a plain PyTorch loop with tk.PruningSampler, resumable.

    python examples/in_run_plain.py [--epochs 12] [--trajectory-len 6] [--prune 0.5] [--ckpt DIR]
    # --stop-after-step K exits after K optimizer steps (mid-epoch); rerun the same command to resume

The first T epochs train on every sample and feed the tracker; from epoch T on the sampler yields
only the kept set, so each later epoch takes fewer steps. The OneCycleLR schedule is sized by
sampler.schedule(), which counts both kinds of epoch. The checkpoint holds the model, optimizer,
scheduler, tracker and sampler state; a resumed run takes the uninterrupted run's batches.
"""

import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import tdds_kernels as tk


def synthetic(n, classes=10, dim=16, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    flipped = torch.rand(n, generator=g) < noise
    return x, torch.where(flipped, torch.randint(0, classes, (n,), generator=g), y)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--trajectory-len", type=int, default=6)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--strategy", default="top", help="top, class_balanced, ccs or random")
    ap.add_argument("--epoch-length", default="pruned", help="pruned, repeat or replacement")
    ap.add_argument("--weights", default=None, help="importance or inverse_keep (default: none)")
    ap.add_argument("--ckpt", default=None, help="checkpoint file: written each epoch, resumed from if present")
    ap.add_argument("--stop-after-step", type=int, default=None, help="save and exit after this many steps")
    ap.add_argument("--out", default=None, help="torch.save scores, kept set and every batch's indices here")
    args = ap.parse_args(argv)

    x, y = synthetic(1200)
    train = TensorDataset(x[:1000], y[:1000])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tracker = tk.TDDSTracker(len(train), 10, window=args.window, trajectory_len=args.trajectory_len)
    sampler = tk.PruningSampler(
        tracker,
        prune_fraction=args.prune,
        strategy=args.strategy,
        labels=y[:1000],
        seed=0,
        epoch_length=args.epoch_length,
        dataset=train,
    )
    weights = tk.PruningWeights(sampler, args.weights)
    loader = DataLoader(tk.IndexedDataset(train), batch_size=50, sampler=sampler)
    plan = sampler.schedule(args.epochs, batch_size=50)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=plan.total_steps)

    start, step, batches = 0, 0, []
    if args.ckpt and os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, weights_only=False)
        for obj, key in ((model, "model"), (opt, "opt"), (sched, "sched"), (tracker, "tracker"), (sampler, "sampler")):
            obj.load_state_dict(ck[key])
        start, step, batches = ck["epoch"], ck["step"], ck["batches"]
        print(f"resumed at epoch {start}, step {step}")

    def save(epoch):
        state = {"model": model, "opt": opt, "sched": sched, "tracker": tracker, "sampler": sampler}
        ck = {k: v.state_dict() for k, v in state.items()}
        torch.save({**ck, "epoch": epoch, "step": step, "batches": batches}, args.ckpt + ".tmp")
        os.replace(args.ckpt + ".tmp", args.ckpt)  # a crash mid-write leaves the last checkpoint

    print(f"steps per epoch {plan.steps_before} before epoch {plan.switch_epoch}, {plan.steps_after} after")
    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)  # resumes a loaded mid-epoch position; chooses the kept set at the switch
        if epoch == plan.switch_epoch and start <= epoch:
            print(f"epoch {epoch}: kept {len(sampler.kept)} of {len(train)} ({args.strategy})")
        for xb, yb, idx in loader:
            logits = model(xb)
            loss = (F.cross_entropy(logits, yb, reduction="none") * weights(idx)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tracker.update(logits.detach(), idx)  # a no-op once the tracker is complete
            step += 1
            batches.append(idx.tolist())
            if step == args.stop_after_step:  # the sampler's state says where in the epoch we are
                save(epoch)
                print(f"stopped at step {step}")
                return
        tracker.end_epoch()
        if args.ckpt:
            save(epoch + 1)

    with torch.no_grad():
        acc = (model(x[1000:]).argmax(1) == y[1000:]).float().mean().item()
    seen = sum(len(b) for b in batches)
    print(f"steps {step} of {plan.total_steps}; samples {seen} ({seen / (args.epochs * len(train)):.0%} of full)")
    print(f"held-out accuracy {acc:.3f}")
    if args.out:
        torch.save({"scores": tracker.scores(), "kept": sampler.kept, "batches": batches}, args.out)


if __name__ == "__main__":
    main()
