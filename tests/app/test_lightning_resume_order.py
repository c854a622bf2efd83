"""Lightning resumes that replay an earlier epoch's order are noticed (a warning), exact ones are
not: with worker processes Lightning restarts the sampler's epoch after a resume, so the first
resumed epoch repeats epoch 0's order; with num_workers=0 and a sampler with set_epoch the
resumed run takes the uninterrupted run's batches and scores."""

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


def loader(workers):
    g = torch.Generator().manual_seed(1)
    data = tk.IndexedDataset(TensorDataset(torch.randn(N, 8, generator=g), torch.randint(0, C, (N,), generator=g)))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)  # has set_epoch
    return DataLoader(data, batch_size=8, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)


def fit(epochs, root, workers, ckpt_path=None, extra=()):
    cb, model = TDDSCallback(N, C, window=3, trajectory_len=4, backend="reference"), Tiny()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cpu_trainer(pl, epochs, root, [cb, *extra]).fit(model, loader(workers), ckpt_path=ckpt_path)
    replays = [str(w.message) for w in caught if "replayed an earlier epoch's order" in str(w.message)]
    return cb, model, replays


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
