"""Hugging Face Trainer integration on a tiny randomly initialised BERT (CPU, synthetic data).

Every resume is compared with an uninterrupted run: bit-equal scores. The 2-rank cases run the
example under torchrun (gloo on loopback)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from tdds_kernels import TDDSTracker  # noqa: E402
from tdds_kernels.integrations.hf import TDDSCallback, add_index  # noqa: E402

from tests.support.helpers import REPO, load_example, one_thread_per_module, torchrun  # noqa: E402, F401 (autouse fixture)

ex = load_example("hf_trainer")
STEPS_PER_EPOCH = len(ex.Tokens()) // 8  # 12 on one process


def run(tmp_path, name, *args):
    return ex.main(["--epochs", "4", "--output-dir", str(tmp_path / name), *map(str, args)])


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return run(tmp_path_factory.mktemp("full"), "full")


def test_records_every_training_row_once_and_never_eval(full, tmp_path):
    trainer, cb = full
    assert cb.tracker.complete and cb.scores.shape == (96,) and cb.scores.abs().sum() > 0
    # Evaluation ran at every epoch end on 48 samples: recorded, they would show as duplicates.
    assert cb.tracker.stats == {
        "duplicates": 0,
        "missing": 0,
        "nonfinite": 0,
        "out_of_range": 0,
        "epochs": 4,
        "windows": 2,
    }
    assert [round(h["epoch"]) for h in trainer.state.log_history if "eval_accuracy" in h] == [1, 2, 3, 4]


def test_predict_and_metrics_see_plain_labels_and_record_nothing(full):
    trainer, cb = full
    before = cb.tracker.stats
    eval_set = add_index(ex.Tokens(48, seed=1))  # an index column in eval data is dropped, not used
    seen = {}

    def metrics(pred):
        seen["label_ids"] = pred.label_ids
        return {}

    trainer.compute_metrics = metrics
    out = trainer.predict(eval_set)
    assert out.predictions.shape == (48, ex.CLASSES) and out.label_ids.shape == (48,)
    assert seen["label_ids"].shape == (48,)  # labels alone: no index riding along as a label
    assert cb.tracker.stats == before


def test_targets_track_the_baselines(tmp_path):
    args = ex.TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    cb = TDDSCallback(96, ex.CLASSES, targets_key="labels", window=3, trajectory_len=3)
    ex.TDDSTrainer(model=ex.tiny_bert(), args=args, train_dataset=add_index(ex.Tokens()), callbacks=[cb]).train()
    base = cb.tracker.baseline_scores()
    assert base and all(v.shape == (96,) for v in base.values())


def test_matches_a_tracker_fed_an_independent_record(tmp_path):
    # The model itself records (input_ids, logits) of its training forwards; input_ids identify
    # the sample (asserted unique), so a plain tracker can be fed the same rows.
    data = ex.Tokens()
    by_ids = {tuple(data[i]["input_ids"].tolist()): i for i in range(len(data))}
    assert len(by_ids) == len(data)
    rows = []
    orig = ex.tiny_bert

    def recording_bert():
        model = orig()
        model.register_forward_hook(
            lambda m, a, kw, out: (
                rows.append((kw["input_ids"].clone(), out.logits.detach().clone())) if m.training else None
            ),
            with_kwargs=True,
        )
        return model

    ex.tiny_bert = recording_bert
    try:
        _, cb = run(tmp_path, "rec")
    finally:
        ex.tiny_bert = orig
    ref = TDDSTracker(96, ex.CLASSES, window=3, trajectory_len=4, backend="reference")
    for e in range(4):
        for ids, logits in rows[e * STEPS_PER_EPOCH : (e + 1) * STEPS_PER_EPOCH]:
            ref.update(logits, torch.tensor([by_ids[tuple(r)] for r in ids.tolist()]))
        ref.end_epoch()
    assert len(rows) == 4 * STEPS_PER_EPOCH
    # The callback's tracker runs the fastest backend; the reference differs by rounding only.
    torch.testing.assert_close(cb.scores, ref.scores(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "save_steps, stop",
    [
        (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH),  # epoch end
        (9, 18),
    ],
)  # mid-epoch
def test_resume_matches_an_uninterrupted_run(full, tmp_path, save_steps, stop):
    run(tmp_path, "r", "--save-steps", save_steps, "--stop-at-step", stop)
    saved = torch.load(tmp_path / "r" / f"checkpoint-{stop}" / "tdds.pt", weights_only=True)
    # Both checkpoints hold an open epoch: at the epoch end, all of epoch 1 (saved before
    # on_epoch_end); mid-epoch, the first 6 of epoch 1's 12 steps.
    assert saved["epoch"] == 1 and saved["rows_in_epoch"] == 8 * (stop - STEPS_PER_EPOCH)
    _, cb = run(tmp_path, "r", "--save-steps", save_steps, "--resume")
    assert cb.tracker.stats["duplicates"] == 0 and cb.tracker.stats["missing"] == 0
    assert torch.equal(cb.scores, full[1].scores)


def test_resume_with_gradient_accumulation(tmp_path):
    # 2 batches per optimizer step: 6 steps per epoch; step 9 is half of epoch 1 (24 batches in).
    _, full = run(tmp_path, "full", "--grad-accum", 2)
    run(tmp_path, "r", "--grad-accum", 2, "--save-steps", 3, "--stop-at-step", 9)
    saved = torch.load(tmp_path / "r" / "checkpoint-9" / "tdds.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["rows_in_epoch"] == 48
    _, cb = run(tmp_path, "r", "--grad-accum", 2, "--save-steps", 3, "--resume")
    assert full.scores.abs().sum() > 0 and torch.equal(cb.scores, full.scores)


def test_checkpoints_after_completion_drop_the_recording_state(tmp_path):
    # trajectory_len 3 of 5 epochs: the tracker completes when epoch 2 ends (after step 36), so
    # the checkpoints at steps 48 and 60 come after completion.
    real = ex.TDDSCallback
    ex.TDDSCallback = lambda n, c, **kw: real(n, c, **{**kw, "trajectory_len": 3})
    try:
        _, done = run(tmp_path, "r", "--epochs", 5, "--save-steps", 12, "--stop-at-step", 60)
        folder = tmp_path / "r" / "checkpoint-48"
        assert sorted(p.name for p in folder.glob("tdds*")) == ["tdds.final.pt"]
        assert sorted(p.name for p in (tmp_path / "r" / "checkpoint-36").glob("tdds*")) == ["tdds.pt"]
        final = torch.load(folder / "tdds.final.pt", weights_only=True)
        assert final["complete"] and not {"prev", "ring", "seen"} & final.keys()
        assert (folder / "tdds.final.pt").stat().st_size < (tmp_path / "r" / "checkpoint-36" / "tdds.pt").stat().st_size
        _, cb = run(tmp_path, "r48", "--epochs", 5, "--resume", folder)
    finally:
        ex.TDDSCallback = real
    assert cb.tracker.complete and cb.tracker.stats == done.tracker.stats
    assert done.scores.abs().sum() > 0 and torch.equal(cb.scores, done.scores)


def test_a_datasets_dataset_with_a_text_column_gives_the_same_scores(full, tmp_path, monkeypatch):
    # The same samples as a datasets.Dataset: remove_unused_columns (on by default) drops the raw
    # "text" column from the dataset itself and keeps "index".
    datasets = pytest.importorskip("datasets")
    real = ex.Tokens

    def as_dataset(*args, **kwargs):
        t = real(*args, **kwargs)
        return datasets.Dataset.from_dict(
            {
                "input_ids": t.ids.tolist(),
                "attention_mask": [[1] * ex.SEQ] * len(t),
                "labels": t.y.tolist(),
                "text": [f"sample {i}" for i in range(len(t))],
            }
        ).with_format("torch")

    monkeypatch.setattr(ex, "Tokens", as_dataset)
    _, cb = run(tmp_path, "ds")
    assert "index" in ex.add_index(as_dataset()).column_names
    assert torch.equal(cb.scores, full[1].scores)
    with pytest.raises(ValueError, match="already has a 'index' column"):
        ex.add_index(ex.add_index(as_dataset()))


def test_resume_without_a_tracker_file_raises(tmp_path):
    run(tmp_path, "r", "--save-steps", 6, "--stop-at-step", 6)
    os.remove(tmp_path / "r" / "checkpoint-6" / "tdds.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint-6/tdds.pt"):
        run(tmp_path, "r", "--save-steps", 6, "--resume")


def test_ignore_data_skip_from_a_mid_epoch_checkpoint_warns(tmp_path, monkeypatch):
    run(tmp_path, "r", "--save-steps", 9, "--stop-at-step", 9)
    real = ex.TrainingArguments
    monkeypatch.setattr(ex, "TrainingArguments", lambda **kw: real(**kw, ignore_data_skip=True))
    with pytest.warns(RuntimeWarning, match=r"holds epoch 0 open with 72 rows recorded.*ignore_data_skip=True"):
        run(tmp_path, "r", "--save-steps", 9, "--resume")


def test_add_index_and_bad_arguments():
    items = add_index([{"a": 1}, {"a": 2}])
    assert items[1] == {"a": 2, "index": 1} and len(items) == 2
    with pytest.raises(TypeError, match="add_index: expected dataset items that are dicts"):
        add_index([(1, 2)])[0]
    with pytest.raises(ValueError, match="device / process_group"):
        TDDSCallback(10, 2, device="cpu")
    with pytest.raises(ValueError, match="window"):
        TDDSCallback(10, 2, window=1)
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1, got 0"):
        TDDSCallback(0, 2)
    TDDSCallback(10, 2, backend="cuda")  # checked on the training device, not here


def run2(tmp_path, *args):
    return torchrun(REPO / "examples" / "hf_trainer.py", *args, cwd=tmp_path)


def test_two_ranks_resume_matches_an_uninterrupted_run(tmp_path):
    # 96 samples on 2 ranks x 8 per batch: 6 steps per epoch, 5 epochs, 3 scored. The full run's
    # own checkpoints are resumed: step 8 is in the middle of epoch 1, step 12 is epoch 1's last
    # step (written before on_epoch_end), step 20 comes after completion (at step 18).
    out = run2(
        tmp_path, "--epochs", 5, "--trajectory-len", 3, "--output-dir", "full", "--save-steps", 4, "--out", "full.pt"
    )
    assert "'duplicates': 0, 'missing': 0" in out
    full = torch.load(tmp_path / "full.pt")
    assert full.abs().sum() > 0
    ck = tmp_path / "full"
    assert sorted(p.name for p in (ck / "checkpoint-8").glob("tdds*")) == ["tdds.pt.rank0-of-2", "tdds.pt.rank1-of-2"]
    assert sorted(p.name for p in (ck / "checkpoint-20").glob("tdds*")) == [
        "tdds.final.pt.rank0-of-2",
        "tdds.final.pt.rank1-of-2",
    ]
    for step in (8, 12, 20):
        run2(
            tmp_path,
            "--epochs",
            5,
            "--trajectory-len",
            3,
            "--output-dir",
            f"r{step}",
            "--resume",
            ck / f"checkpoint-{step}",
            "--out",
            f"r{step}.pt",
        )
        assert torch.equal(torch.load(tmp_path / f"r{step}.pt"), full), step
