"""`tdds-kernels demo --in-run`: does pruning inside the scoring run pay, against the same
compute spent on random samples and against scoring first and retraining?

For every seed and prune fraction, each run a fresh model of the demo's recipe for E epochs
(cosine schedule over the run's own step count, from PruningSampler.schedule):

    full              every sample, every epoch (no tracker)
    in-run tdds       T epochs on every sample feeding a tracker, then the kept set: top,
                      class_balanced and ccs (the balanced strategies)
    in-run random     the same switch epoch and fraction, the kept set drawn at random
    score-retrain     the coreset the in-run top run chose, retrained from scratch for E epochs;
                      its compute counts the T scoring epochs of that run plus the retraining

Compute is counted in samples through the model (forward and backward) and in wall time of the
training loops (evaluation excluded), each as a fraction of the same seed's full run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ..sampling import PruningSampler
from . import data
from .train import accuracy, make_model, make_tracker, random_shift

IN_RUN = {"tdds-top": "top", "tdds-balanced": "class_balanced", "tdds-ccs": "ccs", "random": "random"}
METHODS = ("full", *(f"in-run {m}" for m in IN_RUN), "score-retrain")


def _fit(ds, args, seed, shift, fraction=None, strategy=None, kept=None, on_step=None):
    """One run: (model, samples, seconds, seconds of the first T epochs, kept set chosen)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(ds.y) if kept is None else len(kept)
    x, y = (ds.x, ds.y) if kept is None else (ds.x[kept], ds.y[kept])
    model = make_model(x.shape[1], ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    tracker = sampler = None
    if strategy is not None:
        tracker = make_tracker(args, n, ds.num_classes)
        options = {"hard_cut": args.ccs_hard_cut, "bins": args.ccs_bins} if strategy == "ccs" else None
        sampler = PruningSampler(tracker, fraction, strategy, labels=y, seed=seed, strategy_options=options)
        total = sampler.schedule(args.epochs, args.batch_size).total_steps
    else:
        total = args.epochs * -(-n // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    model.train()
    samples, start, scoring_seconds = 0, time.perf_counter(), None
    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = sampler.epoch_indices(epoch)
        else:
            order = torch.randperm(n, generator=gen)
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            xb = random_shift(x[idx], shift, gen) if shift else x[idx]
            out = model(xb)
            loss = F.cross_entropy(out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if tracker is not None:
                tracker.update(out.detach(), idx)  # a no-op once complete
            samples += len(idx)
            if on_step is not None:
                on_step(len(idx))
        if tracker is not None:
            tracker.end_epoch()
            if epoch + 1 == args.trajectory_len:
                scoring_seconds = time.perf_counter() - start
    seconds = time.perf_counter() - start
    return model.eval(), samples, seconds, scoring_seconds, None if sampler is None else sampler.kept


def _study(ds, args, shift, bar) -> list[dict]:
    rows = []
    for seed in range(args.seeds):
        model, samples, seconds, _, _ = _fit(ds, args, seed, shift, on_step=bar.update)
        full = dict(acc=accuracy(model, ds.x_test, ds.y_test), samples=samples, seconds=seconds)
        rows.append(dict(method="full", fraction=0.0, seed=seed, **full))
        for f in args.prune_fractions:
            for name, strategy in IN_RUN.items():
                bar.set_description(f"seed {seed} prune {f:.0%} in-run {name}")
                model, samples, seconds, scoring, kept = _fit(ds, args, seed, shift, f, strategy, on_step=bar.update)
                acc = accuracy(model, ds.x_test, ds.y_test)
                rows.append(
                    dict(method=f"in-run {name}", fraction=f, seed=seed, acc=acc, samples=samples, seconds=seconds)
                )
                if strategy == "top":
                    top_kept, top_scoring = kept, (scoring, args.trajectory_len * len(ds.y))
            bar.set_description(f"seed {seed} prune {f:.0%} score-retrain")
            model, samples, seconds, _, _ = _fit(ds, args, seed, shift, kept=top_kept, on_step=bar.update)
            rows.append(
                dict(
                    method="score-retrain",
                    fraction=f,
                    seed=seed,
                    acc=accuracy(model, ds.x_test, ds.y_test),
                    samples=samples + top_scoring[1],
                    seconds=seconds + top_scoring[0],
                )
            )
        for row in rows:
            if row["seed"] == seed:
                row["samples_share"] = row["samples"] / full["samples"]
                row["seconds_share"] = row["seconds"] / full["seconds"]
    return rows


def _cell(values):
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def markdown(result: dict) -> str:
    rows, cfg = result["runs"], result["config"]
    fractions = cfg["prune_fractions"]
    lines = [
        f"In-run pruning on {cfg['dataset']} ({cfg['train_samples']} train samples), E={cfg['epochs']} epochs, "
        f"switch after T={cfg['trajectory_len']} (W={cfg['window']}), {cfg['seeds']} seeds, "
        f"{cfg['threads']} thread(s); `{cfg['command']}`",
        "",
        "Test accuracy % (mean ± std; seeds beating in-run random, paired by seed) and compute as a share "
        "of the full run (samples / wall time):",
        "",
        "| method | " + " | ".join(f"prune {f:.0%}" for f in fractions) + " |",
        "|---|" + "---:|" * len(fractions),
    ]
    pick = {(r["method"], r["fraction"], r["seed"]): r for r in rows}
    seeds = range(cfg["seeds"])
    not_beating = []
    for method in METHODS:
        cells = []
        for f in fractions:
            runs = [pick[(method, 0.0 if method == "full" else f, s)] for s in seeds]
            cell = _cell([r["acc"] for r in runs])
            if method not in ("full", "in-run random"):
                wins = sum(r["acc"] > pick[("in-run random", f, r["seed"])]["acc"] for r in runs)
                cell += f" ({wins}/{len(runs)})"
                if method.startswith("in-run tdds") and wins * 2 <= len(runs):
                    not_beating.append(f"{method.removeprefix('in-run ')} at {f:.0%}")
            share = (
                statistics.fmean(r["samples_share"] for r in runs),
                statistics.fmean(r["seconds_share"] for r in runs),
            )
            cells.append(f"{cell}; {share[0]:.0%} / {share[1]:.0%}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    if not_beating:
        lines.append("In-run TDDS does not beat in-run random on most seeds at: " + ", ".join(not_beating) + ".")
    else:
        lines.append("In-run TDDS beats in-run random on most seeds at every fraction.")
    lines.append(f"Machine: {result['machine']}; {result['seconds']:.0f} s in all.")
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows, fractions = result["runs"], result["config"]["prune_fractions"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "os^vD<>"
    for i, method in enumerate(METHODS):
        for j, f in enumerate([0.0] if method == "full" else fractions):
            runs = [r for r in rows if r["method"] == method and r["fraction"] == f]
            acc = [100 * r["acc"] for r in runs]
            x = statistics.fmean(r["samples_share"] for r in runs)
            err = statistics.stdev(acc) if len(acc) > 1 else 0.0
            ax.errorbar(
                x, statistics.fmean(acc), yerr=err, fmt=markers[j % len(markers)], color=f"C{i}",
                label=method if j == 0 else None, capsize=2,
            )  # fmt: skip
    ax.set_xlabel("samples processed, share of the full run (marker shape: prune fraction, in order "
                  + ", ".join(f"{f:.0%}" for f in fractions) + ")")  # fmt: skip
    ax.set_ylabel("test accuracy %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _machine() -> str:
    import os
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    try:  # the widest vector ISA the C++ kernels run here (cpuid): AVX2 and AVX-512 times differ
        from .. import _C

        name += ", " + _C.cpu_variant_supported().upper()
    except ImportError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)"


def run(args, command: str) -> int:
    """The study for the demo's options (--strategies does not apply); writes OUT/in_run.{json,md,png}."""
    from tqdm.auto import tqdm

    if not all(0.0 < f < 1.0 for f in args.prune_fractions):
        print("tdds-kernels demo: --prune-fractions: expected fractions in (0, 1) with --in-run", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    t0 = time.time()
    ds = data.load(args.dataset, args.num_samples)
    shift = 0 if args.no_augment else (ds.default_shift if args.shift is None else args.shift)
    n, t, e = len(ds.y), args.trajectory_len, args.epochs
    kept_sizes = [n - int(f * n) for f in args.prune_fractions]
    per_seed = e * n + sum(4 * (t * n + (e - t) * k) + e * k for k in kept_sizes)
    bar = tqdm(total=args.seeds * per_seed, unit="sample", unit_scale=True, disable=args.no_progress)
    rows = _study(ds, args, shift, bar)
    bar.close()
    config = dict(
        dataset=args.dataset,
        train_samples=n,
        test_samples=len(ds.y_test),
        epochs=e,
        trajectory_len=t,
        window=args.window,
        decay=args.decay,
        seeds=args.seeds,
        prune_fractions=list(args.prune_fractions),
        batch_size=args.batch_size,
        lr=args.lr,
        shift=shift,
        threads=torch.get_num_threads(),
        command=command,
    )
    result = dict(config=config, runs=rows, machine=_machine(), seconds=time.time() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "in_run.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "in_run.md").write_text(table)
    plot(result, args.out / "in_run.png")
    print(table)
    print(f"wrote {args.out}/in_run.json, in_run.md, in_run.png")
    return 0
