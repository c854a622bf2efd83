"""In-run pruning through the trainer callbacks (`pruning=`): Lightning and the Hugging Face
Trainer draw their batches from the callback's PruningSampler: every sample for the T scoring
epochs, then the kept set that select_coreset picks from the tracker's scores; a run resumed at
an epoch's end takes the same batches as the uninterrupted one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import tdds_kernels as tk

N, C, T, W, E, B = 40, 5, 4, 3, 7, 8
PRUNE = dict(prune_fraction=0.5, strategy="top", seed=3)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 8, generator=g), torch.randint(0, C, (N,), generator=g)


def expected_kept(scores):
    return set(tk.select_coreset("top", scores, None, prune_fraction=0.5, seed=3).tolist())


def per_epoch(seen):
    """[(epoch, sorted indices seen in it)] from (epoch, index batch) records."""
    epochs = sorted({e for e, _ in seen})
    return [(e, sorted(i for f, idx in seen if f == e for i in idx.tolist())) for e in epochs]


# ---------------------------------------------------------------------------------- Lightning
pl = pytest.importorskip("pytorch_lightning")
from tdds_kernels.integrations.lightning import TDDSCallback as LightningCallback  # noqa: E402

from tests.support.lightning import cpu_trainer  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self, callback):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.callback, self.seen = torch.nn.Linear(8, C), callback, []

    def train_dataloader(self):
        x, y = data()
        return DataLoader(tk.IndexedDataset(TensorDataset(x, y)), batch_size=B, sampler=self.callback.sampler)

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        logits = self.net(x)
        self.seen.append((self.current_epoch, idx.clone()))
        return {"loss": F.cross_entropy(logits, y), "logits": logits, "index": idx}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def fit(callback, epochs, root, ckpt_path=None, extra=(), **kw):
    model = Tiny(callback)
    cpu_trainer(pl, epochs, root, [callback, *extra], **kw).fit(model, ckpt_path=ckpt_path)
    return model


def lightning_callback():
    return LightningCallback(N, C, window=W, trajectory_len=T, backend="reference", pruning=PRUNE)


def test_lightning_prunes_after_the_trajectory(tmp_path):
    cb = lightning_callback()
    model = fit(cb, E, tmp_path, enable_checkpointing=False)
    epochs = per_epoch(model.seen)
    assert [e for e, _ in epochs] == list(range(E))
    kept = expected_kept(cb.scores)
    assert len(kept) == N // 2
    for e, seen in epochs:
        # every sample once while scoring; afterwards exactly the kept set chosen from the scores
        assert seen == (list(range(N)) if e < T else sorted(kept)), e
    assert set(cb.sampler.kept.tolist()) == kept


def test_lightning_resume_at_an_epoch_end_takes_the_same_batches(tmp_path):
    whole = fit(lightning_callback(), E, tmp_path / "whole", enable_checkpointing=False)
    for stop in (2, T + 1):  # before the switch, and after it (the kept set is chosen again)
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / f"ckpt{stop}", save_last=True, every_n_epochs=1)
        part = fit(lightning_callback(), stop, tmp_path / f"a{stop}", extra=[ckpt])
        rest = fit(
            lightning_callback(), E, tmp_path / f"b{stop}", ckpt_path=str(tmp_path / f"ckpt{stop}" / "last.ckpt")
        )
        got = [(e, i.tolist()) for e, i in part.seen + rest.seen]
        assert got == [(e, i.tolist()) for e, i in whole.seen], stop


def test_lightning_pruning_options_are_checked_up_front():
    with pytest.raises(ValueError, match="prune_fraction"):
        LightningCallback(N, C, window=W, trajectory_len=T, pruning=dict(prune_fraction=1.5))
    with pytest.raises(TypeError, match="pruning"):
        LightningCallback(N, C, window=W, trajectory_len=T, pruning=0.5)


# ---------------------------------------------------------------------- Hugging Face Trainer
def hf_example():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from tests.support.helpers import load_example

    ex = load_example("hf_trainer")
    ex.PlainTrainer = ex.TDDSTrainer  # what each recording run subclasses
    return ex


def hf_run(monkeypatch, ex, out, *args):
    """The example with --prune-in-run, recording each training step's dataset indices."""
    seen = []

    class Recording(ex.PlainTrainer):
        def training_step(self, model, inputs, *a, **kw):
            seen.append(inputs["index"].clone())
            return super().training_step(model, inputs, *a, **kw)

    monkeypatch.setattr(ex, "TDDSTrainer", Recording)
    base = ["--epochs", "5", "--trajectory-len", "3", "--no-eval", "--prune-in-run", "0.5"]
    trainer, cb = ex.main([*base, "--output-dir", str(out), *map(str, args)])
    return trainer, cb, seen


def test_hf_prunes_after_the_trajectory_and_resumes_with_the_same_batches(tmp_path, monkeypatch):
    ex = hf_example()
    n, per_epoch = len(ex.Tokens()), len(ex.Tokens()) // 8
    _, cb, seen = hf_run(monkeypatch, ex, tmp_path / "whole")
    assert len(seen) == 5 * per_epoch  # "repeat": an epoch keeps its steps after the switch
    kept = set(tk.select_coreset("top", cb.scores, None, prune_fraction=0.5, seed=0).tolist())
    assert set(cb.sampler.kept.tolist()) == kept and len(kept) == n // 2
    for e in range(5):
        rows = torch.cat(seen[e * per_epoch : (e + 1) * per_epoch]).tolist()
        if e < 3:
            assert sorted(rows) == list(range(n)), e
        else:  # the kept set, each sample twice (N samples per epoch from N/2 kept)
            assert sorted(rows) == sorted(list(kept) * 2), e
    # A crash in the middle of a pruned epoch; resumed, the Trainer skips the batches it had
    # trained (the same order: the kept set is chosen again from the restored scores), and the
    # run takes the same batches and ends with the same scores.
    stop, out = 3 * per_epoch + 6, tmp_path / "stopped"
    _, _, before = hf_run(monkeypatch, ex, out, "--save-steps", stop, "--stop-at-step", stop)
    _, resumed, after = hf_run(monkeypatch, ex, out, "--save-steps", stop, "--resume")
    assert [i.tolist() for i in before[:stop] + after] == [i.tolist() for i in seen]
    assert torch.equal(resumed.scores, cb.scores)


def test_hf_pruning_needs_epochs_of_a_constant_length():
    ex = hf_example()
    with pytest.raises(ValueError, match="epoch_length"):
        ex.TDDSCallback(96, ex.CLASSES, window=3, trajectory_len=3, pruning=dict(prune_fraction=0.5))
