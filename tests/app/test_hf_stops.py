"""Hugging Face Trainer: a run that stops inside an epoch keeps that epoch open (the Trainer
still calls on_epoch_end), so a checkpoint saved at the stop resumes to the uninterrupted run's
scores; a plain Trainer, which never feeds the callback, is refused when training starts; a kill
right after the Trainer's checkpoint still resumes. The stop and the kill also on 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import Trainer, TrainingArguments  # noqa: E402

from tdds_kernels.integrations.hf import TDDSCallback, add_index  # noqa: E402

from tests.support.helpers import REPO, load_example, torchrun  # noqa: E402

ex = load_example("hf_trainer")


def run(out, *args):
    return ex.main(["--epochs", "4", "--no-eval", "--output-dir", str(out), *map(str, args)])


def test_a_stop_inside_an_epoch_then_resume_gives_the_uninterrupted_scores(tmp_path):
    _, whole = run(tmp_path / "whole")
    per_epoch = len(ex.Tokens()) // 8
    stop = 2 * per_epoch + 5  # inside epoch 2; save_strategy="epoch" saves at the stop, after on_epoch_end
    _, stopped = run(tmp_path / "run", "--save-epochs", "--stop-at-step", stop)
    assert stopped.tracker.epoch == 2 and stopped.tracker.rows_in_epoch == 5 * 8  # still open
    _, resumed = run(tmp_path / "run", "--save-epochs", "--resume")
    assert resumed.tracker.stats["missing"] == 0 and resumed.tracker.stats["duplicates"] == 0
    assert torch.equal(resumed.scores, whole.scores)


def test_a_plain_trainer_is_refused_in_one_line(tmp_path):
    args = ex.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, report_to=[], use_cpu=True)
    cb = TDDSCallback(96, ex.CLASSES, window=3, trajectory_len=3)
    trainer = Trainer(model=ex.tiny_bert(), args=args, train_dataset=add_index(ex.Tokens()), callbacks=[cb])
    with pytest.raises(RuntimeError) as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message and "TDDSTrainer" in message and "TDDSTrainerMixin" in message


def test_a_checkpoint_from_more_processes_names_the_world_size_and_the_merge(tmp_path):
    run(tmp_path / "run", "--save-steps", 12, "--stop-at-step", 12)
    folder = tmp_path / "run" / "checkpoint-12"
    single = folder / "tdds.pt"
    for r in range(2):  # what a 2-process run leaves in the folder instead of one file
        (folder / f"tdds.pt.rank{r}-of-2").write_bytes(single.read_bytes())
    single.unlink()
    with pytest.raises(FileNotFoundError) as info:
        run(tmp_path / "run", "--save-steps", 12, "--resume")
    message = str(info.value)
    assert "\n" not in message and "saved by 2 processes" in message and "on 1 process" in message
    assert "resume with 2 processes" in message and "merge_shards" in message and "is missing" not in message


class Killed(Exception):
    """A kill right after the Trainer's own checkpoint (rotation included), before on_save."""


def test_a_crash_right_after_the_trainers_checkpoint_still_resumes(tmp_path, monkeypatch):
    _, whole = run(tmp_path / "whole")
    per_epoch, plain = len(ex.Tokens()) // 8, ex.TDDSTrainer

    class CrashAfterCheckpoint(plain):
        def _save_checkpoint(self, *args, **kwargs):
            super()._save_checkpoint(*args, **kwargs)
            if self.state.global_step == 2 * per_epoch:
                raise Killed

    monkeypatch.setattr(ex, "TDDSTrainer", CrashAfterCheckpoint)
    # save_total_limit=1: the older checkpoint is already deleted when the crash comes
    monkeypatch.setattr(ex, "TrainingArguments", lambda **kw: ex.__dict__["_Args"](**kw, save_total_limit=1))
    monkeypatch.setattr(ex, "_Args", TrainingArguments, raising=False)
    with pytest.raises(Killed):
        run(tmp_path / "run", "--save-steps", per_epoch)
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*")] == [f"checkpoint-{2 * per_epoch}"]
    monkeypatch.setattr(ex, "TDDSTrainer", plain)
    _, resumed = run(tmp_path / "run", "--save-steps", per_epoch, "--resume")
    assert torch.equal(resumed.scores, whole.scores)


# The same two cases on 2 gloo ranks (a sharded tracker, one file per rank), with the real Trainer
# under torchrun: tests/support/hf_ranks.py (32 samples, 4 steps an epoch, 3 epochs).
HF_RANKS = REPO / "tests" / "support" / "hf_ranks.py"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    # One launch (its imports cost more than the runs): the uninterrupted run, the run stopped
    # inside epoch 1 and its resume, the run killed inside the checkpoint window and its resume.
    cwd = tmp_path_factory.mktemp("hf_ranks")
    try:
        output = torchrun(HF_RANKS, "whole", "stop", "resume:stop", "crash", "resume:crash", cwd=cwd)
    except AssertionError as e:  # a run failed: each test checks the result files of its own runs
        output = str(e)
    return cwd, output


def rank_results(cwd, name, output):
    files = [cwd / f"{name}.rank{r}.pt" for r in range(2)]
    assert all(f.exists() for f in files), f"no results of the {name!r} run:\n{output}"
    return [torch.load(f, weights_only=False) for f in files]


def test_two_ranks_a_stop_inside_an_epoch_then_resume_gives_the_uninterrupted_scores(two_ranks):
    cwd, output = two_ranks
    whole, stopped, resumed = (rank_results(cwd, name, output) for name in ("whole", "stop", "stop-resumed"))
    # max_steps stopped 2 steps (2 x 8 samples) into epoch 1: the checkpoint holds epoch 1 open
    assert [s["epoch"] for s in stopped] == [1, 1] and sum(s["rows"] for s in stopped) == 16
    assert whole[0]["scores"].abs().sum() > 0 and torch.equal(whole[1]["scores"], whole[0]["scores"])
    for r in resumed:
        assert r["stats"]["missing"] == 0 and r["stats"]["duplicates"] == 0
        assert torch.equal(r["scores"], whole[0]["scores"])


def test_two_ranks_a_kill_inside_the_checkpoint_window_still_resumes(two_ranks):
    cwd, output = two_ranks
    assert all(f"rank {r}: killed after checkpoint-8" in output for r in range(2)), output
    # save_total_limit=1: checkpoint-4 was rotated away before the kill
    assert [p.name for p in (cwd / "crash").glob("checkpoint-*")] == ["checkpoint-8"]
    whole, resumed = rank_results(cwd, "whole", output), rank_results(cwd, "crash-resumed", output)
    for r in resumed:
        assert r["stats"]["missing"] == 0 and torch.equal(r["scores"], whole[0]["scores"])
