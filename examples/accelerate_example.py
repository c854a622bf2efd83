"""TDDS scores in a Hugging Face Accelerate loop, saved and restored with accelerator.save_state.

    python examples/accelerate_example.py --epochs 4
    torchrun --nproc_per_node=2 examples/accelerate_example.py --epochs 4   # or: accelerate launch
    python examples/accelerate_example.py --ckpt ck --stop-at-step 10       # interrupted run ...
    python examples/accelerate_example.py --ckpt ck                         # ... resumed: same scores

Needs `accelerate` (the `hf` extra). Synthetic blobs, a small MLP, SGD; a checkpoint every
--save-every optimizer steps (mid-epoch ones included).
"""

import argparse
import os

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset

import tdds_kernels as tk
from tdds_kernels.integrations.accelerate import TrackerState, make_tracker

N, C, D = 200, 5, 8


class Progress:
    """Where the loop is (epoch, steps done in it), saved with the rest by save_state."""

    def __init__(self):
        self.epoch, self.step = 0, 0

    def state_dict(self):
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, sd):
        self.epoch, self.step = sd["epoch"], sd["step"]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ckpt", help="checkpoint folder: resumed from when it exists")
    ap.add_argument("--save-every", type=int, default=5, help="optimizer steps between checkpoints")
    ap.add_argument("--stop-at-step", type=int, help="stop after this many steps, as if the run crashed")
    ap.add_argument("--out", help="write the scores here (torch.save)")
    args = ap.parse_args(argv)

    # A seedable sampler: each epoch's order depends on the seed and the epoch only, so a resumed
    # run sees the batches an uninterrupted one would.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True)
    )
    set_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (N,), generator=g)
    x = torch.randn(C, D, generator=g)[y] + torch.randn(N, D, generator=g)
    data = tk.IndexedDataset(TensorDataset(x, y))  # batches (x, y, index)
    model = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.ReLU(), torch.nn.Linear(32, C))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(data, batch_size=10, shuffle=True))

    tracker = make_tracker(accelerator, N, C, window=3, trajectory_len=args.epochs)
    progress = Progress()
    accelerator.register_for_checkpointing(TrackerState(tracker), progress)
    if args.ckpt and os.path.isdir(args.ckpt):
        accelerator.load_state(args.ckpt)
        accelerator.print(f"resumed at epoch {progress.epoch}, step {progress.step}")

    steps = progress.epoch * len(loader) + progress.step
    for epoch in range(progress.epoch, args.epochs):
        loader.set_epoch(epoch)
        # The open epoch's batches already recorded are skipped, not replayed.
        epoch_loader = accelerator.skip_first_batches(loader, progress.step) if progress.step else loader
        for xb, yb, idx in epoch_loader:
            logits = model(xb)
            accelerator.backward(F.cross_entropy(logits, yb))
            opt.step()
            opt.zero_grad()
            tracker.update(logits.detach(), idx)  # every process, every step
            progress.step += 1
            steps += 1
            if args.ckpt and steps % args.save_every == 0:
                accelerator.save_state(args.ckpt)
            if steps == args.stop_at_step:
                accelerator.wait_for_everyone()
                accelerator.print(f"stopped at step {steps}")
                return
        tracker.end_epoch()
        progress.epoch, progress.step = epoch + 1, 0

    scores, stats = tracker.scores().cpu(), tracker.stats  # collective: every process
    accelerator.print(f"kept {len(tk.select(scores, prune_fraction=0.5))} of {N}; stats: {stats}")
    if args.out and accelerator.is_main_process:
        torch.save(scores, args.out)


if __name__ == "__main__":
    main()
