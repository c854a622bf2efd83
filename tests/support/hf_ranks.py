"""The Hugging Face Trainer on gloo ranks, run under torchrun by tests/app/test_hf_stops.py (not a
test module). Each positional argument is one run, in order, in this process:

    whole             3 epochs without a stop: scores to whole.pt
    stop              stopped by max_steps inside epoch 1, saving at the stop (save_strategy="epoch")
    resume:FOLDER     FOLDER's run resumed from its last checkpoint to 3 epochs: results as FOLDER-resumed
    crash             checkpoints every epoch, keeps one (save_total_limit=1), and is killed on
                      every rank right after the Trainer's checkpoint at epoch 2's end: the window
                      before the callback's on_save

Each run writes its rank's result ({scores, stats, epoch, rows}) to <name>.rank<r>.pt in the
working directory. Tiny on purpose (32 samples, 4 steps an epoch on 2 ranks): the CI machine
has 2 shared cores.
"""

import os
import sys

import torch
import torch.distributed as dist
from transformers import TrainingArguments

from tdds_kernels.integrations.hf import TDDSCallback, TDDSTrainer, add_index

from tests.support.helpers import load_example

ex = load_example("hf_trainer")
N, EPOCHS, PER_DEVICE = 32, 3, 4


def steps_per_epoch():
    return N // (PER_DEVICE * int(os.environ["WORLD_SIZE"]))  # set by torchrun before the group exists


class Killed(Exception):
    """The job killed right after the Trainer's checkpoint (rotation included), before on_save."""


class KilledAfterCheckpoint(TDDSTrainer):
    def _save_checkpoint(self, *args, **kwargs):
        super()._save_checkpoint(*args, **kwargs)
        if self.state.global_step == 2 * steps_per_epoch():
            # Every rank is past the Trainer's checkpoint (and rank 0 past its rotation) before any
            # stops: what a kill -9 of the job inside the window leaves on disk (measured the same
            # with SIGKILL and a second torchrun launch for the resume; an exception saves that
            # launch's 20 s of imports). Nothing of the run is written after: on_save never comes.
            dist.barrier()
            raise Killed(f"rank {dist.get_rank()}: killed after checkpoint-{self.state.global_step}")


def train(name, folder, trainer_cls=TDDSTrainer, resume=None, **overrides):
    settings = dict(
        output_dir=folder,
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=PER_DEVICE,
        learning_rate=1e-3,
        lr_scheduler_type="constant",  # a max_steps run keeps the uninterrupted run's learning rates
        seed=0,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    args = TrainingArguments(**(settings | overrides))
    cb = TDDSCallback(N, ex.CLASSES, window=3, trajectory_len=EPOCHS)
    trainer = trainer_cls(model=ex.tiny_bert(), args=args, train_dataset=add_index(ex.Tokens(N)), callbacks=[cb])
    trainer.train(resume_from_checkpoint=resume)
    t = cb.tracker
    result = {"scores": cb.scores, "stats": t.stats, "epoch": t.epoch, "rows": t.rows_in_epoch}
    torch.save(result, f"{name}.rank{dist.get_rank()}.pt")


def main(runs):
    for run in runs:
        if run == "whole":
            train("whole", "whole")
        elif run == "stop":
            train("stop", "stop", max_steps=steps_per_epoch() + 2, save_strategy="epoch")
        elif run.startswith("resume:"):
            folder = run.split(":", 1)[1]
            train(f"{folder}-resumed", folder, resume=True)
        elif run == "crash":
            every = dict(save_strategy="steps", save_steps=steps_per_epoch(), save_total_limit=1)
            try:
                train("crash", "crash", KilledAfterCheckpoint, **every)
            except Killed as e:
                print(e, flush=True)
        else:
            raise SystemExit(f"hf_ranks: unknown run {run!r}")
    if os.environ["RANK"] == "0":
        print("stats: done", flush=True)  # the marker tests.support.helpers.torchrun looks for


if __name__ == "__main__":
    main(sys.argv[1:])
