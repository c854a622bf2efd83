"""TDDSCallback with a tiny LightningModule on CPU (skipped where pytorch-lightning is missing)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("pytorch_lightning")

from tdds_kernels import IndexedDataset, TDDSTracker  # noqa: E402
from tdds_kernels.integrations.lightning import TDDSCallback  # noqa: E402

N, C, T, W = 40, 5, 5, 3


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(8, C)
        self.seen = []  # (logits, index) per step, to replay into a plain tracker

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        logits = self.net(x)
        self.seen.append((logits.detach().clone(), idx.clone()))
        return {"loss": F.cross_entropy(logits, y), "logits": logits, "index": idx}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def loader():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, 8, generator=g), torch.randint(0, C, (N,), generator=g)
    return DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=8, shuffle=False)


def trainer(max_epochs, tmp_path, **kw):
    kw = {"devices": 1, **kw}
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, **kw)


def make_callback():
    return TDDSCallback(N, C, window=W, trajectory_len=T, backend="reference")


def test_callback_matches_a_plain_tracker(tmp_path):
    model, cb = Tiny(), make_callback()
    trainer(T, tmp_path, callbacks=[cb], enable_checkpointing=False).fit(model, loader())
    ref = TDDSTracker(N, C, window=W, trajectory_len=T, backend="reference")
    steps = len(model.seen) // T
    for e in range(T):
        for logits, idx in model.seen[e * steps:(e + 1) * steps]:
            ref.update(logits, idx)
        ref.end_epoch()
    assert cb.tracker.complete and cb.tracker.epoch == T
    torch.testing.assert_close(cb.scores, ref.scores(), rtol=1e-6, atol=1e-7)
    assert cb.scores.abs().sum() > 0


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    full_cb = make_callback()
    trainer(T, tmp_path / "a", callbacks=[full_cb], enable_checkpointing=False).fit(Tiny(), loader())

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    first = make_callback()
    trainer(2, tmp_path / "b", callbacks=[first, ckpt]).fit(Tiny(), loader())
    assert first.tracker.epoch == 2
    resumed = make_callback()
    trainer(T, tmp_path / "b", callbacks=[resumed], enable_checkpointing=False).fit(
        Tiny(), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.tracker.epoch == T
    torch.testing.assert_close(resumed.scores, full_cb.scores, rtol=1e-6, atol=1e-7)


def test_missing_keys_raise_clearly(tmp_path):
    class NoIndex(Tiny):
        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            return F.cross_entropy(self.net(x), y)

    with pytest.raises(KeyError, match="must return a dict with 'logits' and 'index'"):
        trainer(1, tmp_path, callbacks=[make_callback()], enable_checkpointing=False).fit(NoIndex(), loader())


class Recording(TDDSCallback):
    """Writes this rank's scores and the batches it saw, for the parent process to check."""

    def __init__(self, out):
        super().__init__(N, C, window=W, trajectory_len=T, backend="reference")
        self.out = out

    def on_train_end(self, trainer, pl_module):
        super().on_train_end(trainer, pl_module)
        shard = getattr(self.tracker, "shard_size", self.tracker.num_samples)  # a single tracker: all
        torch.save({"scores": self.scores, "seen": pl_module.seen, "shard": shard},
                   self.out / f"rank{trainer.global_rank}.pt")


def test_ddp_spawn_two_ranks_shard_the_state(tmp_path):
    cb = Recording(tmp_path)
    trainer(T, tmp_path, callbacks=[cb], enable_checkpointing=False, strategy="ddp_spawn",
            devices=2).fit(Tiny(), loader())
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["shard"] for r in ranks] == [N // 2, N // 2]
    ref = TDDSTracker(N, C, window=W, trajectory_len=T, backend="reference")
    steps = len(ranks[0]["seen"]) // T
    for e in range(T):
        for s in range(e * steps, (e + 1) * steps):  # the step's batches in rank order
            ref.update(torch.cat([r["seen"][s][0] for r in ranks]), torch.cat([r["seen"][s][1] for r in ranks]))
        ref.end_epoch()
    for r in ranks:
        torch.testing.assert_close(r["scores"], ref.scores(), rtol=1e-6, atol=1e-7)
