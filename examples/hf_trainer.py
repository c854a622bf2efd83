"""TDDS scores from a Hugging Face Trainer: subclass compute_loss, keep the index column.

    python examples/hf_trainer.py [--epochs 6]
    torchrun --nproc_per_node=2 examples/hf_trainer.py     # sharded tracker, one per rank

The dataset yields {"x", "labels", "index"}; remove_unused_columns=False keeps "index" in the
batch (the Trainer drops columns the model's forward does not take, for datasets.Dataset).
compute_loss pops it, runs the model and feeds the logits to the tracker on training steps; a
TrainerCallback closes a tracker epoch at each training epoch's end and writes the tracker next
to each Trainer checkpoint. Needs `transformers` (not a dependency of tdds_kernels).
"""
import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

import tdds_kernels as tk
from tdds_kernels.integrations.loop import make_tracker


class Blobs(Dataset):
    def __init__(self, n=1000, classes=10, dim=16, noise=0.1, seed=0):
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(classes, dim, generator=g)
        y = torch.randint(0, classes, (n,), generator=g)
        self.x = centers[y] + torch.randn(n, dim, generator=g)
        flipped = torch.rand(n, generator=g) < noise
        self.y = torch.where(flipped, torch.randint(0, classes, (n,), generator=g), y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i], "index": i}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class TDDSTrainer(Trainer):
    def __init__(self, *args, tracker, **kwargs):
        super().__init__(*args, **kwargs)
        self.tracker = tracker
        self.add_callback(CloseEpochs(tracker))

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        index, labels = inputs.pop("index"), inputs.pop("labels")
        logits = model(**inputs)
        loss = F.cross_entropy(logits, labels)
        if model.training:  # training steps only: every rank takes this branch on every step
            self.tracker.update(logits.detach(), index)
        return (loss, {"logits": logits}) if return_outputs else loss


class CloseEpochs(TrainerCallback):
    def __init__(self, tracker):
        self.tracker = tracker

    def on_epoch_end(self, args, state, control, **kwargs):
        self.tracker.end_epoch()

    def on_save(self, args, state, control, **kwargs):
        # Beside the Trainer's checkpoint; sharded trackers write one file per rank.
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        self.tracker.save(os.path.join(folder, "tdds.pt"))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--output-dir", default="hf_tdds_out")
    args = ap.parse_args(argv)

    targs = TrainingArguments(output_dir=args.output_dir, num_train_epochs=args.epochs,
                              per_device_train_batch_size=32, learning_rate=0.05, seed=0,
                              remove_unused_columns=False, save_strategy="no", report_to=[],
                              use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    data = Blobs()
    # targs.device sets up torch.distributed under torchrun, so make_tracker sees the ranks.
    tracker = make_tracker(len(data), 10, device=targs.device, window=3, trajectory_len=args.epochs)
    trainer = TDDSTrainer(model=Net(), args=targs, train_dataset=data, tracker=tracker)
    trainer.train()
    scores = tracker.scores()  # collective under torchrun
    if trainer.is_world_process_zero():
        kept = tk.select(scores, prune_fraction=0.5)
        print(f"scores {tuple(scores.shape)}, kept {len(kept)}; {tracker!r}")


if __name__ == "__main__":
    main()
