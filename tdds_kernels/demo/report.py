"""The demo's table (JSON and Markdown) and plot."""

from __future__ import annotations

import statistics


def summarize(acc: dict, full_acc: float, config: dict, seconds: float) -> dict:
    """acc: {strategy: {prune_fraction: [test accuracy per seed]}} → a JSON-able result."""
    rows = []
    for name, by_fraction in acc.items():
        for f, values in by_fraction.items():
            rand = acc["random"][f]
            rows.append(
                {
                    "strategy": name,
                    "prune_fraction": f,
                    "accuracy": values,
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    # Paired by seed: same training seed and data order, only the coreset differs.
                    "wins_vs_random": None if name == "random" else sum(a > r for a, r in zip(values, rand)),
                    "seeds": len(values),
                }
            )
    return {"config": config, "full_data_accuracy": full_acc, "seconds": seconds, "rows": rows}


def _augment(cfg) -> str:
    return f"shift ±{cfg['shift']}" if cfg["shift"] else "no augmentation"


def markdown(result: dict) -> str:
    cfg = result["config"]
    fractions = sorted({r["prune_fraction"] for r in result["rows"]})
    cells = {(r["strategy"], r["prune_fraction"]): r for r in result["rows"]}
    strategies = list(dict.fromkeys(r["strategy"] for r in result["rows"]))
    lines = [
        f"Test accuracy (%) on {cfg['dataset']} ({cfg['train_samples']} train / {cfg['test_samples']} test), "
        f"mean ± std over {cfg['seeds']} seeds, (wins vs random per seed); {cfg['epochs']} epochs, "
        f"{_augment(cfg)}, TDDS T={cfg['trajectory_len']} W={cfg['window']} β={cfg['decay']}. "
        f"Full data: {100 * result['full_data_accuracy']:.1f}. Run time {result['seconds']:.0f} s.",
        "",
        "| strategy | " + " | ".join(f"prune {f:.0%}" for f in fractions) + " |",
        "|---|" + "---:|" * len(fractions),
    ]
    for s in strategies:
        row = []
        for f in fractions:
            r = cells[(s, f)]
            wins = "" if r["wins_vs_random"] is None else f" ({r['wins_vs_random']}/{r['seeds']})"
            row.append(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}{wins}")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    if cfg.get("command"):
        lines += ["", f"Command: `{cfg['command']}`"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    """Left: accuracy against prune fraction; right: the paired gap to random (same seeds)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    cfg = result["config"]
    strategies = list(dict.fromkeys(r["strategy"] for r in result["rows"]))
    rows = {
        s: sorted((r for r in result["rows"] if r["strategy"] == s), key=lambda r: r["prune_fraction"])
        for s in strategies
    }
    palette = [f"C{i}" for i in range(10) if i != 3]  # C3 (red) is TDDS's alone
    fig, (ax, gap) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for i, s in enumerate(s for s in strategies):
        xs = [100 * r["prune_fraction"] for r in rows[s]]
        style = (
            dict(color="black", linestyle="--")
            if s == "random"
            else dict(color="C3", linewidth=2.5)
            if s == "tdds"
            else dict(color=palette[i % len(palette)], linewidth=1.3)
        )
        ax.errorbar(
            xs,
            [100 * r["mean"] for r in rows[s]],
            yerr=[100 * r["std"] for r in rows[s]],
            marker="o",
            markersize=4,
            capsize=3,
            label=s,
            **style,
        )
        diffs = [[100 * (a - b) for a, b in zip(r["accuracy"], q["accuracy"])] for r, q in zip(rows[s], rows["random"])]
        mean = [statistics.fmean(d) for d in diffs]
        std = [statistics.stdev(d) if len(d) > 1 else 0.0 for d in diffs]
        gap.errorbar(xs, mean, yerr=std, marker="o", markersize=4, capsize=3, **style)
    ax.axhline(100 * result["full_data_accuracy"], color="grey", linewidth=1, linestyle=":", label="full data")
    fractions = [100 * r["prune_fraction"] for r in rows["random"]]
    for a, ylabel in ((ax, "test accuracy (%)"), (gap, "accuracy − random, same seed (points)")):
        a.set_xticks(fractions)
        a.set_xlabel("pruned fraction of the training set (%)")
        a.set_ylabel(ylabel)
        a.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle(
        f"{cfg['dataset']} ({cfg['train_samples']} train), {_augment(cfg)}, {cfg['epochs']} "
        f"epochs, TDDS T={cfg['trajectory_len']} W={cfg['window']}: mean ± std over "
        f"{cfg['seeds']} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
