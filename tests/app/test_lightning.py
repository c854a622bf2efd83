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
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def make_callback():
    return TDDSCallback(N, C, window=W, trajectory_len=T, backend="reference")


def test_callback_matches_a_plain_tracker(tmp_path):
    model, cb = Tiny(), make_callback()
    trainer(T, tmp_path, callbacks=[cb], enable_checkpointing=False).fit(model, loader())
    ref = TDDSTracker(N, C, window=W, trajectory_len=T, backend="reference")
    steps = len(model.seen) // T
    for e in range(T):
        for logits, idx in model.seen[e * steps : (e + 1) * steps]:
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
        Tiny(), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert resumed.tracker.epoch == T
    torch.testing.assert_close(resumed.scores, full_cb.scores, rtol=1e-6, atol=1e-7)


class StopAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_mid_epoch_checkpoint_warns_and_resume_does_what_it_says(tmp_path):
    # 5 steps per epoch; step 7 is epoch 1 after 2 batches (16 rows).
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7, save_top_k=-1)
    trainer(T, tmp_path / "b", callbacks=[make_callback(), ckpt, StopAt(7)]).fit(Tiny(), loader())
    (path,) = (tmp_path / "ckpt").iterdir()
    resumed = make_callback()
    with pytest.warns(RuntimeWarning, match=r"middle of epoch 1 \(16 rows recorded\)"):
        trainer(T, tmp_path / "b", callbacks=[resumed], enable_checkpointing=False).fit(
            Tiny(), loader(), ckpt_path=path
        )
    # As warned: epoch 1 restarts at its first batch and runs the 3 steps left, so batches 0-1
    # are recorded twice and batches 3-4 not at all.
    stats = resumed.tracker.stats
    assert (stats["duplicates"], stats["missing"]) == (16, 16)


def test_complete_tracker_checkpoints_drop_the_recording_state(tmp_path):
    import io

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    cb = make_callback()
    trainer(T, tmp_path / "a", callbacks=[cb, ckpt]).fit(Tiny(), loader())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][cb.state_key]["tracker"]
    assert saved["complete"] and not {"prev", "ring", "seen"} & saved.keys()

    def size(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.tell()

    assert size(cb.tracker.state_dict()) - size(saved) >= N * C * 4  # prev alone is N x C float32
    # Training on from it: the tracker stays complete, with the same scores and stats.
    resumed = make_callback()
    trainer(T + 1, tmp_path / "a", callbacks=[resumed], enable_checkpointing=False).fit(
        Tiny(), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert resumed.tracker.complete and resumed.tracker.stats == cb.tracker.stats
    assert torch.equal(resumed.scores, cb.scores)


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
        torch.save(
            {"scores": self.scores, "seen": pl_module.seen, "shard": shard}, self.out / f"rank{trainer.global_rank}.pt"
        )


def test_ddp_spawn_two_ranks_shard_the_state(tmp_path):
    cb = Recording(tmp_path)
    trainer(T, tmp_path, callbacks=[cb], enable_checkpointing=False, strategy="ddp_spawn", devices=2).fit(
        Tiny(), loader()
    )
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
