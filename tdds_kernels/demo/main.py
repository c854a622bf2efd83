"""The demo's command line and its loop: one scoring run on the full data, then the coreset runs."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from ..core import selection
from ..core.baselines import NAMES as BASELINES
from ..core.baselines import keep_scores
from ..core.tracker import TDDSTracker
from . import data, report
from .train import accuracy, train

SCORES = ("random", "tdds") + BASELINES
METHODS = {"top": "top", "balanced": "class_balanced", "ccs": "ccs", "weighted": "top"}
# The default set fits the 10-minute budget; the other baselines (el2n, aum, dyn_unc) and methods
# (SCORE-ccs, SCORE-balanced, SCORE-weighted) are one --strategies away.
DEFAULT_STRATEGIES = ("random", "tdds", "tdds-balanced", "tdds-ccs", "forgetting")
QUICK = dict(num_samples=7500, epochs=15, seeds=3, strategies="random,tdds,tdds-ccs")


def parse_strategy(name: str) -> tuple[str, str]:
    """'score[-method]' → (score, method): e.g. 'tdds-ccs', 'el2n', 'tdds-weighted', 'random'."""
    score, _, method = name.partition("-")
    method = method or "top"
    if score not in SCORES or method not in METHODS or (score == "random" and method != "top"):
        raise argparse.ArgumentTypeError(
            f"strategy {name!r}: expected 'random' or SCORE[-METHOD] with SCORE in {SCORES[1:]} and "
            f"METHOD in {tuple(METHODS)}"
        )
    return score, method


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None
    if not values or not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in [0, 1), got {text!r}")
    return sorted(values)


def _strategies(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    for name in names:
        parse_strategy(name)
    if "random" not in names:
        names.insert(0, "random")  # the reference every win is counted against
    return list(dict.fromkeys(names))


DESCRIPTION = """\
Train, score, prune, retrain: does a TDDS coreset beat a random one of the same size?

runs    1. one full-data training run (30 epochs) of a ~9k-parameter 1-D CNN on MNIST-1D
           (20,000 train / 5,000 test, generated locally, no download), feeding every batch's
           logits to a TDDSTracker (T=10, W=5, beta=0.9) that also tracks the baselines;
        2. for each seed (5), prune fraction (50%, 70%, 90%) and strategy (random, tdds,
           tdds-balanced, tdds-ccs, forgetting): a fresh model trained on that coreset.
time    about 6 minutes on 2 CPU cores (358 s measured on a quiet 2-core AMD EPYC machine);
        --quick (7,500 samples, 15 epochs, 3 seeds, 3 strategies) about 25 s (24 s measured).
        Runs on CPU, one thread by default; no GPU used or needed.
writes  OUT/results.json  every seed's test accuracy, the settings and the command line
        OUT/results.md    the table printed at the end: mean +- std per strategy and prune
                          fraction, with paired wins against random (same seed)
        OUT/plot.png      accuracy vs prune fraction, and the paired gap to random"""

EPILOG = """\
examples:
  tdds-kernels demo                       # the study above, into demo_out/
  tdds-kernels demo --quick --out quick/  # a smoke test: too small to conclude from
  tdds-kernels demo --strategies tdds,el2n,aum,dyn_unc --seeds 3"""


def quick_note(train_samples: int, epochs: int, seeds: int) -> str:
    return (
        f"note: --quick is a smoke test ({train_samples} training samples, {epochs} epochs, "
        f"{seeds} seeds): too small a run to conclude from; run without --quick for the study."
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults in the help, and the description's layout kept as written."""

    def _get_help_string(self, action):
        # No "(default: None/False)": those options say in their own words what happens unset.
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    parser.description, parser.epilog = DESCRIPTION, EPILOG
    add = parser.add_argument
    add("--dataset", choices=data.DATASETS, default="mnist1d")
    add(
        "--num-samples",
        type=int,
        default=None,
        help="MNIST-1D: total generated, 80%% train (None: 25000 → 20k/5k); digits: a subsample",
    )
    add("--epochs", type=int, default=30, help="epochs of every run (full-data and coreset)")
    add("--seeds", type=int, default=5, help="coreset runs per strategy and fraction (>= 3 advised)")
    add("--trajectory-len", "-T", type=int, default=10, help="TDDS T: epochs scored")
    add("--window", "-W", type=int, default=5, help="TDDS W (also Dyn-Unc's window)")
    add("--decay", type=float, default=0.9, help="TDDS β")
    add("--prune-fractions", type=_fractions, default=[0.5, 0.7, 0.9], help="comma-separated")
    add(
        "--strategies",
        type=_strategies,
        default=list(DEFAULT_STRATEGIES),
        help="comma-separated SCORE[-METHOD]: SCORE in "
        + ", ".join(SCORES)
        + "; METHOD in "
        + ", ".join(METHODS)
        + " (weighted = top-k plus the release's score-weighted loss)",
    )
    add(
        "--shift",
        type=int,
        default=None,
        help="random-shift augmentation in positions (None: 4 for mnist1d, 1 for digits)",
    )
    add("--no-augment", action="store_true", help="no shift augmentation")
    add("--ccs-hard-cut", type=float, default=0.1, help="CCS: hardest fraction dropped first")
    add("--ccs-bins", type=int, default=50, help="CCS: score strata")
    add("--batch-size", type=int, default=100)
    add("--lr", type=float, default=0.1)
    add("--backend", default="auto", help="TDDSTracker backend (auto: the fastest available)")
    add(
        "--threads",
        type=int,
        default=1,
        help="torch threads; this model is too small to gain from more, and on a shared machine "
        "2 threads ran 15x slower than 1",
    )
    add(
        "--quick",
        action="store_true",
        help=f"smoke-test-sized run ({', '.join(f'{k}={v}' for k, v in QUICK.items())}) for the "
        "options not given; its numbers are too small a run to conclude from",
    )
    add("--out", type=Path, default=Path("demo_out"), help="folder for results.{json,md} and plot.png")
    add("--no-progress", action="store_true")
    add("--in-run", action="store_true", help="prune inside the scoring run instead (docs/in_run.md)")
    parser.set_defaults(run=run, _parser=parser)


def _apply_quick(args) -> None:
    defaults = {a.dest: a.default for a in args._parser._actions}
    for key, value in QUICK.items():
        if getattr(args, key) == defaults[key]:
            setattr(args, key, _strategies(value) if key == "strategies" else value)


def _command(args) -> str:
    """The command line that reproduces this run (options that differ from their defaults)."""
    parts = ["tdds-kernels demo"]
    for action in args._parser._actions:
        if not action.option_strings or action.dest in ("help", "no_progress"):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if action.nargs == 0:
            parts.append(flag)
        else:
            parts.append(f"{flag} {','.join(map(str, value)) if isinstance(value, list) else value}")
    return " ".join(parts)


def run(args) -> int:
    command = _command(args)
    if args.quick:
        _apply_quick(args)
    for name, value, low in (
        ("--epochs", args.epochs, 1),
        ("--seeds", args.seeds, 1),
        ("--window", args.window, 3),
        ("--batch-size", args.batch_size, 1),
    ):
        if value < low:
            print(f"tdds-kernels demo: {name}: expected >= {low}, got {value}", file=sys.stderr)
            return 2
    if not args.window <= args.trajectory_len <= args.epochs:
        print(
            f"tdds-kernels demo: expected window <= trajectory-len <= epochs, got W={args.window}, "
            f"T={args.trajectory_len}, epochs={args.epochs}",
            file=sys.stderr,
        )
        return 2
    if args.in_run:  # full vs in-run TDDS vs in-run random vs score-then-retrain: OUT/in_run.*
        from . import in_run

        return in_run.run(args, command)
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
    with warnings.catch_warnings():  # "using the reference backend": fine at this size
        warnings.simplefilter("ignore", UserWarning)
        tracker = TDDSTracker(
            n,
            ds.num_classes,
            window=args.window,
            decay=args.decay,
            trajectory_len=args.trajectory_len,
            backend=args.backend,
        )
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
        on_epoch=bar.update,
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
        shift=shift, train_samples=n, test_samples=len(ds.y_test), threads=torch.get_num_threads(), command=command
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
