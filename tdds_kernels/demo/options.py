"""The demo's command line: its options, help text and the checks made before any training.

Imports neither torch nor the demo's datasets: `tdds-kernels demo --help` and a bad option
answer at once, and every option is refused here, in one line, before the first epoch (never
after the whole training run)."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from pathlib import Path

# The baselines' names, as tdds_kernels.core.baselines.NAMES (tests/app/test_demo.py checks).
BASELINES = ("forgetting", "el2n", "aum", "dyn_unc")
SCORES = ("random", "tdds") + BASELINES
METHODS = {"top": "top", "balanced": "class_balanced", "ccs": "ccs", "weighted": "top"}
DATASETS = ("mnist1d", "digits")
DIGITS_SCANS = 1797  # scikit-learn's digits
MIN_SAMPLES = 50  # below this the 80/20 split leaves a test set too small to read a percentage from
BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
# The default set fits the 10-minute budget; the other baselines (el2n, aum, dyn_unc) and methods
# (SCORE-ccs, SCORE-balanced, SCORE-weighted) are one --strategies away.
DEFAULT_STRATEGIES = ("random", "tdds", "tdds-balanced", "tdds-ccs", "forgetting")
QUICK = dict(num_samples=7500, epochs=15, seeds=3, strategies="random,tdds,tdds-ccs")
# The packages of the demo extra, and what needs each.
EXTRA = 'pip install --no-build-isolation ".[demo]" in the clone'
NEEDS = {"mnist1d": "--dataset mnist1d", "sklearn": "--dataset digits", "matplotlib": "the plot (plot.png)"}


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


DESCRIPTION = (
    """\
Train, score, prune, retrain: does a TDDS coreset beat a random one of the same size?

runs    1. one full-data training run (30 epochs) of a ~9k-parameter 1-D CNN on MNIST-1D
           (20,000 train / 5,000 test, generated locally, no download), feeding every batch's
           logits to a TDDSTracker (T=10, W=5, beta=0.9) that also tracks the baselines;
        2. for each seed (5), prune fraction (50%, 70%, 90%) and strategy (random, tdds,
           tdds-balanced, tdds-ccs, forgetting): a fresh model trained on that coreset.
time    about 6 minutes: 358 s on a quiet 2-core AMD EPYC (AVX-512, torch 2.13), several
        times that when other jobs share the cores; --quick (7,500 samples, 15 epochs, 3 seeds,
        3 strategies) 24 s there. After two epochs the demo prints its estimate for this
        machine. Runs on CPU, one thread by default; no GPU used or needed.
repeats the same command, torch and CPU give the same table; another CPU (another ISA, or
        another torch) can move single cells by about one std (docs/demo.md#reproducibility)
writes  OUT/results.json  every seed's test accuracy, the settings and the command line
        OUT/results.md    the table printed at the end: mean +- std per strategy and prune
                          fraction, with paired wins against random (same seed)
        OUT/plot.png      accuracy vs prune fraction, and the paired gap to random
needs   the demo extra (mnist1d, scikit-learn, matplotlib): """
    + EXTRA
)

EPILOG = """\
examples:
  tdds-kernels demo                       # the study above, into demo_out/
  tdds-kernels demo --quick --out quick/  # a smoke test: too small to conclude from
  tdds-kernels demo --strategies tdds,el2n,aum,dyn_unc --seeds 3"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults in the help, and the description's layout kept as written."""

    def _get_help_string(self, action):
        # No "(default: None/False)": those options say in their own words what happens unset.
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser, run) -> None:
    parser.formatter_class = _HelpFormatter
    parser.description, parser.epilog = DESCRIPTION, EPILOG
    add = parser.add_argument
    add("--dataset", choices=DATASETS, default="mnist1d", help="mnist1d (generated locally) or digits (scikit-learn)")
    add(
        "--num-samples",
        type=int,
        default=None,
        help=f"MNIST-1D: total generated, 80%% train (unset: 25000 → 20k/5k); digits: a subsample of "
        f"its {DIGITS_SCANS} scans (unset: all); at least {MIN_SAMPLES}",
    )
    add("--epochs", type=int, default=30, help="epochs of every run (full-data and coreset)")
    add("--seeds", type=int, default=5, help="coreset runs per strategy and fraction (>= 3 advised)")
    add("--trajectory-len", "-T", type=int, default=10, help="TDDS T: epochs scored (<= --epochs)")
    add("--window", "-W", type=int, default=5, help="TDDS W, >= 3 (also Dyn-Unc's window)")
    add("--decay", type=float, default=0.9, help="TDDS β, in (0, 1]")
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
        help="random-shift augmentation in positions (unset: 4 for mnist1d, 1 for digits)",
    )
    add("--no-augment", action="store_true", help="no shift augmentation")
    add("--ccs-hard-cut", type=float, default=0.1, help="CCS: hardest fraction dropped first, in [0, 1)")
    add("--ccs-bins", type=int, default=50, help="CCS: score strata")
    add("--batch-size", type=int, default=100, help="samples per SGD step, in every run")
    add("--lr", type=float, default=0.1, help="peak SGD learning rate (Nesterov, cosine schedule to 0)")
    add("--backend", default="auto", help="TDDSTracker backend: " + ", ".join(BACKENDS))
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
    add("--no-progress", action="store_true", help="no progress bar (the time estimate is still printed)")
    add("--in-run", action="store_true", help="prune inside the scoring run instead (docs/in_run.md)")
    parser.set_defaults(run=run, _parser=parser)


def apply_quick(args) -> None:
    defaults = {a.dest: a.default for a in args._parser._actions}
    for key, value in QUICK.items():
        if key == "num_samples" and args.dataset != "mnist1d":  # digits has 1,797 scans: all of them
            continue
        if getattr(args, key) == defaults[key]:
            setattr(args, key, _strategies(value) if key == "strategies" else value)


def command(args) -> str:
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


def check(args) -> str | None:
    """Every option and the packages the run will need, before any data or model is made: None,
    or the one-line reason to refuse the run. Creates --out (an empty folder) to prove it can."""
    for name, value, low in (
        ("--epochs", args.epochs, 1),
        ("--seeds", args.seeds, 1),
        ("--window", args.window, 3),
        ("--trajectory-len", args.trajectory_len, 3),
        ("--batch-size", args.batch_size, 1),
        ("--ccs-bins", args.ccs_bins, 1),
        ("--threads", args.threads, 1),
    ):
        if value < low:
            return f"{name}: expected an integer >= {low}, got {value}"
    if not args.window <= args.trajectory_len <= args.epochs:
        return (
            f"-W/-T/--epochs: expected W <= T <= epochs, got W={args.window}, T={args.trajectory_len}, "
            f"epochs={args.epochs}"
        )
    high = DIGITS_SCANS if args.dataset == "digits" else None
    if args.num_samples is not None and (args.num_samples < MIN_SAMPLES or (high and args.num_samples > high)):
        within = f"{MIN_SAMPLES}..{high}" if high else f">= {MIN_SAMPLES}"
        return f"--num-samples: expected {within} for --dataset {args.dataset}, got {args.num_samples}"
    if args.shift is not None and args.shift < 0:
        return f"--shift: expected positions >= 0, got {args.shift}"
    for name, value, ok, expected in (
        ("--decay", args.decay, 0.0 < args.decay <= 1.0, "a value in (0, 1]"),
        ("--lr", args.lr, math.isfinite(args.lr) and args.lr > 0.0, "a finite value > 0"),
        ("--ccs-hard-cut", args.ccs_hard_cut, 0.0 <= args.ccs_hard_cut < 1.0, "a fraction in [0, 1)"),
    ):
        if not ok:
            return f"{name}: expected {expected}, got {value}"
    if args.backend not in BACKENDS:
        return f"--backend: expected one of {', '.join(BACKENDS)}, got {args.backend!r}"
    wanted = ("mnist1d" if args.dataset == "mnist1d" else "sklearn", "matplotlib")
    for module in wanted:
        if importlib.util.find_spec(module) is None:
            return f"{NEEDS[module]} needs the {module} package, from the demo extra: {EXTRA}"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--out {args.out}: cannot create the folder ({exc.strerror or exc})"
    if not args.out.is_dir() or not os.access(args.out, os.W_OK | os.X_OK):
        return f"--out {args.out}: expected a writable folder"
    return None


def quick_note(train_samples: int, epochs: int, seeds: int) -> str:
    return (
        f"note: --quick is a smoke test ({train_samples} training samples, {epochs} epochs, "
        f"{seeds} seeds): too small a run to conclude from; run without --quick for the study."
    )
