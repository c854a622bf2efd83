"""TDDS scores from PyTorch Lightning with tdds_kernels.integrations.lightning.TDDSCallback.

    python examples/lightning_example.py [--epochs 6] [--devices 2] [--release-dir out] [--retrain-epochs 2]
    python examples/lightning_example.py --epochs 8 --trajectory-len 5 --prune-in-run 0.5


training_step returns the logits and the dataset indices next to the loss; the callback records
them, closes an epoch per training epoch, shards its state under DDP (--devices > 1 runs
strategy="ddp" on CPU processes) and rides in Lightning's checkpoints (resume with ckpt_path).
Then the scores go to the retraining run: the release's mask / score files (--release-dir) and
a model trained on the kept half (--retrain-epochs). With --prune-in-run the same run trains on
the kept set once the trajectory is scored (the callback's PruningSampler; docs/in_run.md).
"""

import argparse

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import tdds_kernels as tk
from tdds_kernels.integrations.lightning import TDDSCallback
from tdds_kernels.retrain import kept_subset, write_release_files


def synthetic(n=1000, classes=10, dim=16, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    flipped = torch.rand(n, generator=g) < noise
    return TensorDataset(x, torch.where(flipped, torch.randint(0, classes, (n,), generator=g), y))


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, y), "logits": logits, "index": idx}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class InRunClassifier(Classifier):
    """The train loader comes from the module, made once Lightning has set up the ranks."""

    def __init__(self, data, callback):
        super().__init__()
        self.data, self.callback = data, callback

    def train_dataloader(self):
        return DataLoader(tk.IndexedDataset(self.data), batch_size=32, sampler=self.callback.sampler)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--out", default=None, help="torch.save the scores here (rank 0)")
    ap.add_argument("--release-dir", help="write data_mask_win{W}_ep{T}.npy / score_win{W}_ep{T}.npy here")
    ap.add_argument("--retrain-epochs", type=int, default=0, help="train a fresh model on the kept half")
    ap.add_argument("--trajectory-len", type=int, help="epochs scored (default: all of them)")
    ap.add_argument("--prune-in-run", type=float, metavar="FRACTION", help="prune inside this run once scored")
    args = ap.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    data = synthetic()
    loader = DataLoader(tk.IndexedDataset(data), batch_size=32, shuffle=True)
    pruning = None if args.prune_in_run is None else dict(prune_fraction=args.prune_in_run)
    tdds = TDDSCallback(
        num_samples=len(data),
        num_classes=10,
        window=3,
        trajectory_len=args.trajectory_len or args.epochs,
        pruning=pruning,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        callbacks=[tdds],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=pruning is None,  # the pruning sampler splits the ranks itself
    )
    if pruning is None:
        trainer.fit(Classifier(), loader)
    else:
        trainer.fit(InRunClassifier(data, tdds))
        if trainer.is_global_zero:
            first, kept = tdds.sampler.switch_epoch, len(tdds.sampler.kept)
            print(f"in-run: epochs {first}..{args.epochs - 1} on {kept} kept samples")
    kept = tk.select(tdds.scores, prune_fraction=0.5)  # the same on every rank
    if args.release_dir:
        write_release_files(tdds.tracker, args.release_dir)  # collective under DDP; rank 0 writes
    if trainer.is_global_zero:
        print(f"scores {tuple(tdds.scores.shape)}, kept {len(kept)}; {tdds.tracker!r}")
        if args.out:
            torch.save(tdds.scores, args.out)
    if args.retrain_epochs:
        pruned = DataLoader(kept_subset(data, kept), batch_size=32, shuffle=True)  # (x, y) batches
        retrain = pl.Trainer(
            max_epochs=args.retrain_epochs,
            accelerator="cpu",
            devices=args.devices,
            strategy="ddp" if args.devices > 1 else "auto",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        retrain.fit(Retrained(), pruned)
        if retrain.is_global_zero:
            print(f"retrained {args.retrain_epochs} epochs on {len(pruned.dataset)} samples")


class Retrained(Classifier):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)


if __name__ == "__main__":
    main()
