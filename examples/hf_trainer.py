"""TDDS scores from a Hugging Face Trainer fine-tuning a (tiny, randomly initialised) BERT.

    python examples/hf_trainer.py --epochs 4
    torchrun --nproc_per_node=2 examples/hf_trainer.py --epochs 4      # sharded tracker
    python examples/hf_trainer.py --save-steps 3 --stop-at-step 9      # interrupted run ...
    python examples/hf_trainer.py --save-steps 3 --resume              # ... resumed: same scores

Needs `transformers` and `accelerate` (the `hf` extra). The data is synthetic token sequences
whose label depends on a few marker tokens, with some labels flipped; each item is a dict with
a raw "text" entry too, which the Trainer's default remove_unused_columns=True drops.
"""

import argparse

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, TrainingArguments

import tdds_kernels as tk
from tdds_kernels.integrations.hf import TDDSCallback, TDDSTrainer, add_index

CLASSES, SEQ, VOCAB = 3, 8, 40


class Tokens(Dataset):
    def __init__(self, n=96, noise=0.1, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, CLASSES, (n,), generator=g)
        self.ids = torch.randint(CLASSES + 1, VOCAB, (n, SEQ), generator=g)
        self.ids[:, 0] = 1 + self.y  # the marker token carries the label
        flipped = torch.rand(n, generator=g) < noise
        self.y = torch.where(flipped, torch.randint(0, CLASSES, (n,), generator=g), self.y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(SEQ, dtype=torch.int64),
            "labels": self.y[i],
            "text": f"sample {i}",
        }


def tiny_bert():
    torch.manual_seed(0)
    # No dropout: the Trainer snapshots the RNG when it saves a checkpoint, and evaluation at an
    # epoch's end draws from the global RNG afterwards, so after a resume from an epoch-end step
    # checkpoint the dropout masks (not the TDDS recording) would differ from an uninterrupted run.
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        num_labels=CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg)


class StopAt(TrainerCallback):
    """Stops training after `step` (its checkpoint is written first): a simulated crash."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--output-dir", default="hf_tdds_out")
    ap.add_argument("--save-steps", type=int, help="checkpoint every K optimizer steps (default: none)")
    ap.add_argument("--stop-at-step", type=int, help="stop after this step, as if the run crashed")
    ap.add_argument("--save-epochs", action="store_true", help="checkpoint at every epoch's end (and at a stop)")
    ap.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        help="resume from the last checkpoint, or from the checkpoint folder given",
    )
    ap.add_argument("--out", help="write the scores here (torch.save)")
    ap.add_argument("--no-eval", action="store_true", help="no evaluation at epoch ends")
    ap.add_argument("--trajectory-len", type=int, help="epochs scored (default: all of them)")
    ap.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    ap.add_argument(
        "--prune-in-run",
        type=float,
        metavar="FRACTION",
        help="prune this fraction inside the run once the scores are ready (docs/in_run.md)",
    )
    args = ap.parse_args(argv)

    targs = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        seed=0,
        gradient_accumulation_steps=args.grad_accum,
        save_strategy="epoch" if args.save_epochs else "steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        eval_strategy="no" if args.no_eval else "epoch",
        per_device_eval_batch_size=16,
        report_to=[],
        logging_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    train_set = add_index(Tokens())  # items get "index": i
    # In-run pruning: after the scored epochs, epochs of the same length drawn from the kept set
    # (the Trainer counts epochs by steps, so their length stays the same).
    pruning = None if args.prune_in_run is None else dict(prune_fraction=args.prune_in_run, epoch_length="repeat")
    cb = TDDSCallback(
        len(train_set), CLASSES, window=3, trajectory_len=args.trajectory_len or args.epochs, pruning=pruning
    )
    callbacks = [cb] + ([StopAt(args.stop_at_step)] if args.stop_at_step else [])

    def accuracy(pred):  # a stock compute_metrics: label_ids stays the labels alone
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    trainer = TDDSTrainer(
        model=tiny_bert(),
        args=targs,
        train_dataset=train_set,
        eval_dataset=Tokens(48, seed=1),
        compute_metrics=accuracy,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=args.resume)
    if args.stop_at_step:
        print(f"stopped at step {trainer.state.global_step}")
        return trainer, cb
    stats = cb.tracker.stats  # collective under torchrun, like scores
    if trainer.is_world_process_zero():
        kept = tk.select(cb.scores, prune_fraction=0.5)
        print(f"scores {tuple(cb.scores.shape)}, kept {len(kept)}; stats: {stats}")
        if args.out:
            torch.save(cb.scores, args.out)
    return trainer, cb


if __name__ == "__main__":
    main()
