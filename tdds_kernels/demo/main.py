"""The demo's loop: one scoring run on the full data, then the coreset runs. Its options and
their checks are in options.py (no torch there, so --help and bad options answer at once)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..core import selection
from ..core.baselines import keep_scores
from . import data, report
from .options import METHODS, parse_strategy, quick_note
from .train import accuracy, make_tracker, train


class _Estimate:
    """Advances the progress bar, and after the second epoch prints once how long the whole run
    should take on this machine, at the second epoch's pace per sample (the first one pays for
    warm-up: allocator, kernel selection). The bar's own estimate is hidden with --no-progress
    or when stderr is not a terminal; this line is not. The full-data epochs also feed the
    tracker, so an estimate taken there errs long, not short."""

    def __init__(self, total: int, bar):
        self.total, self.bar, self.done, self.epochs = total, bar, 0, 0
        self.start = self.mark = time.perf_counter()

    def update(self, samples: int) -> None:
        self.bar.update(samples)
        self.done += samples
        self.epochs += 1
        now = time.perf_counter()
        if self.epochs == 2:
            left = (self.total - self.done) * (now - self.mark) / samples
            self.bar.write(
                f"tdds-kernels demo: {now - self.start:.1f} s for the first 2 epochs: about "
                f"{(now - self.start + left) / 60:.1f} min in all on this machine",
                file=sys.stderr,
            )
        self.mark = now


def run(args, cmd: str) -> int:
    """The demo, for options that tdds_kernels.demo.run has checked; `cmd` reproduces it."""
    torch.set_num_threads(max(1, args.threads))
    t_start = time.time()
    ds = data.load(args.dataset, args.num_samples)
    shift = 0 if args.no_augment else (ds.default_shift if args.shift is None else args.shift)
    n = len(ds.y)
    strategies = [(name, *parse_strategy(name)) for name in args.strategies]
    kept_total = sum(selection.num_kept(n, f) for f in args.prune_fractions)
    total = args.epochs * (n + args.seeds * len(strategies) * kept_total)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        unit="sample",
        unit_scale=True,
        disable=args.no_progress,
        desc="full-data run (scoring)",
        dynamic_ncols=True,
    )
    try:
        tracker = make_tracker(args, n, ds.num_classes)
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a backend this machine lacks
        bar.close()
        print(f"tdds-kernels demo: error: --backend {args.backend}: {exc}", file=sys.stderr)
        return 2
    estimate = _Estimate(total, bar)
    model = train(
        ds.x,
        ds.y,
        ds.num_classes,
        args.epochs,
        seed=0,
        shift=shift,
        batch_size=args.batch_size,
        lr=args.lr,
        tracker=tracker,
        on_epoch=estimate.update,
    )
    full_acc = accuracy(model, ds.x_test, ds.y_test)
    scores = {"tdds": tracker.scores()}
    scores.update({k: keep_scores(k, v) for k, v in tracker.baseline_scores().items()})

    acc = {name: {f: [] for f in args.prune_fractions} for name, _, _ in strategies}
    for seed in range(args.seeds):
        for f in args.prune_fractions:
            for name, score, method in strategies:
                bar.set_description(f"seed {seed} prune {f:.0%} {name}")
                strategy = "random" if score == "random" else METHODS[method]
                options = {"hard_cut": args.ccs_hard_cut, "bins": args.ccs_bins} if method == "ccs" else {}
                kept = selection.select_coreset(
                    strategy, scores.get(score), ds.y, prune_fraction=f, seed=seed, **options
                )
                weights = selection.importance_weights(scores[score])[kept] if method == "weighted" else None
                m = train(
                    ds.x[kept],
                    ds.y[kept],
                    ds.num_classes,
                    args.epochs,
                    seed=seed,
                    shift=shift,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    weights=weights,
                    on_epoch=bar.update,
                )
                acc[name][f].append(accuracy(m, ds.x_test, ds.y_test))
    bar.close()

    config = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if not k.startswith("_") and k not in ("run", "no_progress")
    }
    config.update(
        shift=shift, train_samples=n, test_samples=len(ds.y_test), threads=torch.get_num_threads(), command=cmd
    )
    result = report.summarize(acc, full_acc, config, seconds=time.time() - t_start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = report.markdown(result)
    note = quick_note(n, args.epochs, args.seeds) if args.quick else None
    if note:  # a reader of the table alone must not take a smoke test for a result
        table = f"{note}\n\n{table}"
    (args.out / "results.md").write_text(table)
    report.plot(result, args.out / "plot.png")
    print(table)
    print(f"wrote {args.out}/results.json, results.md, plot.png in {result['seconds']:.0f} s")
    if note:
        print(note)
    return 0
