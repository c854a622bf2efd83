"""Lightning resumes that replay an earlier epoch's order are noticed (a warning), exact ones are
not: with worker processes Lightning restarts the sampler's epoch after a resume, so the first
resumed epoch repeats epoch 0's order; with num_workers=0 and a sampler with set_epoch the
resumed run takes the uninterrupted run's batches and scores. Mid-epoch checkpoints: exact and
unwarned with a torchdata StatefulDataLoader drawing from its own sampler (restored at its
position), warned otherwise; checkpoints after an epoch's last batch (before the epoch closes)
are exact and unwarned with a plain DataLoader, and leave a StatefulDataLoader nothing for the
next epoch (warned)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import tdds_kernels as tk

pl = pytest.importorskip("pytorch_lightning")
from tdds_kernels.integrations.lightning import TDDSCallback  # noqa: E402

from tests.support.lightning import cpu_trainer  # noqa: E402

N, C = 40, 5


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.seen = torch.nn.Linear(8, C), []

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        logits = self.net(x)
        self.seen.append((self.current_epoch, idx.tolist()))
        return {"loss": F.cross_entropy(logits, y), "logits": logits, "index": idx}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def dataset():
    g = torch.Generator().manual_seed(1)
    return tk.IndexedDataset(TensorDataset(torch.randn(N, 8, generator=g), torch.randint(0, C, (N,), generator=g)))


def set_epoch_sampler(data):
    return DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)  # has set_epoch


def loader(workers):
    data = dataset()
    kw = dict(num_workers=workers, persistent_workers=workers > 0)
    return DataLoader(data, batch_size=8, sampler=set_epoch_sampler(data), **kw)


def fit_warned(epochs, root, train_loader, ckpt_path=None, extra=(), module=None, val_loader=None):
    cb, model = TDDSCallback(N, C, window=3, trajectory_len=4, backend="reference"), (module or Tiny)()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cpu_trainer(pl, epochs, root, [cb, *extra]).fit(model, train_loader, val_loader, ckpt_path=ckpt_path)
    return cb, model, [str(w.message) for w in caught if "TDDS" in str(w.message)]


def fit(epochs, root, workers, ckpt_path=None, extra=()):
    cb, model, warned = fit_warned(epochs, root, loader(workers), ckpt_path, extra)
    return cb, model, [w for w in warned if "replayed an earlier epoch's order" in w]


@pytest.mark.parametrize("workers", [0, 1], ids=["num_workers=0", "num_workers=1"])
def test_a_replayed_epoch_order_warns_and_an_exact_resume_does_not(tmp_path, workers):
    whole, whole_model, replays = fit(4, tmp_path / "whole", workers)
    assert replays == []  # an uninterrupted run never warns
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    _, first, _ = fit(2, tmp_path / "a", workers, extra=[ckpt])
    resumed, second, replays = fit(4, tmp_path / "b", workers, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    same = first.seen + second.seen == whole_model.seen
    if workers == 0:  # exact: the same batches and scores, no warning
        assert same and torch.equal(resumed.scores, whole.scores) and replays == []
    else:  # Lightning replays epoch 0's order in epoch 2: noticed, once
        assert not same and [s for e, s in second.seen if e == 2][0] == [s for e, s in first.seen if e == 0][0]
        assert len(replays) == 1 and "epoch 2, the first after the resume" in replays[0] and "epoch 0" in replays[0]


# 5 steps an epoch: step 7 is 2 batches (16 rows) into epoch 1, step 10 its last batch.
MID, LAST = "middle of epoch 1 (16 rows recorded)", "after epoch 1's last batch"


def ckpts(root, *steps):
    every = [pl.callbacks.ModelCheckpoint(dirpath=root / f"s{s}", every_n_train_steps=s, save_top_k=-1) for s in steps]
    return every, lambda step: root / f"s{step}" / f"epoch={(step - 1) // 5}-step={step}.ckpt"


RESTORED = ["StatefulDataLoader", "StatefulDataLoader+sequential"]  # at their position: no sampler or generator given
NOT_RESTORED = ["StatefulDataLoader+sampler", "StatefulDataLoader+generator", "DataLoader"]


@pytest.mark.parametrize("kind", RESTORED + NOT_RESTORED)
def test_a_mid_epoch_resume_is_exact_and_unwarned_only_with_a_stateful_dataloader(tmp_path, kind):
    sdl = pytest.importorskip("torchdata.stateful_dataloader", reason="StatefulDataLoader: torchdata (test extra)")

    loaders = {
        "StatefulDataLoader": lambda d: sdl.StatefulDataLoader(d, batch_size=8, shuffle=True),
        "StatefulDataLoader+sequential": lambda d: sdl.StatefulDataLoader(d, batch_size=8, shuffle=False),
        "StatefulDataLoader+sampler": lambda d: sdl.StatefulDataLoader(d, batch_size=8, sampler=set_epoch_sampler(d)),
        "StatefulDataLoader+generator": lambda d: sdl.StatefulDataLoader(
            d, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)
        ),
        "DataLoader": lambda d: DataLoader(d, batch_size=8, shuffle=True),
    }
    make = lambda: loaders[kind](dataset())

    every, path = ckpts(tmp_path, 7, 10)
    at_end = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "end", every_n_epochs=1, save_top_k=-1)
    whole, whole_model, warned = fit_warned(4, tmp_path / "whole", make(), extra=[*every, at_end])  # saves only
    assert warned == []
    resumed, model, warned = fit_warned(4, tmp_path / "r", make(), ckpt_path=path(7))
    exact = model.seen == whole_model.seen[-len(model.seen) :] and torch.equal(resumed.scores, whole.scores)
    stats = resumed.tracker.stats
    if kind in RESTORED:
        assert exact and (stats["duplicates"], stats["missing"]) == (0, 0) and warned == []
        # From epoch 1's last batch it has none left for epoch 2: warned, and so it is
        resumed, _, warned = fit_warned(4, tmp_path / "r10", make(), ckpt_path=path(10))
        assert [w for w in warned if LAST in w] and resumed.tracker.stats["missing"] == N
        # From epoch 1's end: exact sequentially only (shuffle=True: epoch 2 takes another
        # order, as with a plain DataLoader; the order warning fires only when it repeats one)
        resumed, _, warned = fit_warned(4, tmp_path / "rend", make(), ckpt_path=tmp_path / "end" / path(10).name)
        assert torch.equal(resumed.scores, whole.scores) == (kind == "StatefulDataLoader+sequential")
    else:  # not restored at its position: warned, and so it is
        assert not exact and [w for w in warned if MID in w]
        if kind == "DataLoader":  # epoch 1's batches start over
            assert stats["duplicates"] > 0 and stats["missing"] > 0


class Validated(Tiny):
    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val", F.cross_entropy(self.net(x), y))


def test_checkpoints_after_an_epochs_last_batch_resume_exactly_without_a_warning(tmp_path):
    # With a set_epoch sampler and num_workers=0: at step 10 (every_n_train_steps) and at
    # validation end, both before epoch 1 closes, with all its rows recorded.
    at_val_end = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "v", save_top_k=-1, save_on_train_epoch_end=False)
    every, path = ckpts(tmp_path, 10)
    run = dict(module=Validated, val_loader=loader(0))
    whole, _, _ = fit_warned(4, tmp_path / "whole", loader(0), extra=[*every, at_val_end], **run)
    for ckpt in (path(10), tmp_path / "v" / "epoch=1-step=10.ckpt"):
        resumed, _, warned = fit_warned(4, tmp_path / "r", loader(0), ckpt_path=ckpt, **run)
        assert torch.equal(resumed.scores, whole.scores) and warned == [], ckpt
