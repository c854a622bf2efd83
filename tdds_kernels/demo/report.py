"""The demo's table (JSON and Markdown) and plot."""
from __future__ import annotations

import statistics


def summarize(acc: dict, full_acc: float, config: dict, seconds: float) -> dict:
    """acc: {strategy: {prune_fraction: [test accuracy per seed]}} → a JSON-able result."""
    rows = []
    for name, by_fraction in acc.items():
        for f, values in by_fraction.items():
            rand = acc["random"][f]
            rows.append({
                "strategy": name, "prune_fraction": f, "accuracy": values,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                # Paired by seed: same training seed and data order, only the coreset differs.
                "wins_vs_random": None if name == "random" else sum(a > r for a, r in zip(values, rand)),
                "seeds": len(values),
            })
    return {"config": config, "full_data_accuracy": full_acc, "seconds": seconds, "rows": rows}


def markdown(result: dict) -> str:
    cfg = result["config"]
    fractions = sorted({r["prune_fraction"] for r in result["rows"]})
    cells = {(r["strategy"], r["prune_fraction"]): r for r in result["rows"]}
    strategies = list(dict.fromkeys(r["strategy"] for r in result["rows"]))
    lines = [
        f"Test accuracy (%) on {cfg['dataset']} ({cfg['train_samples']} train / {cfg['test_samples']} test), "
        f"mean ± std over {cfg['seeds']} seeds, (wins vs random per seed); {cfg['epochs']} epochs, "
        f"shift ±{cfg['shift']}, TDDS T={cfg['trajectory_len']} W={cfg['window']} β={cfg['decay']}. "
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
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    cfg = result["config"]
    strategies = list(dict.fromkeys(r["strategy"] for r in result["rows"]))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, s in enumerate(strategies):
        rows = sorted((r for r in result["rows"] if r["strategy"] == s), key=lambda r: r["prune_fraction"])
        xs = [100 * r["prune_fraction"] for r in rows]
        style = dict(color="black", linestyle="--") if s == "random" else \
            dict(linewidth=2.5 if s == "tdds" else 1.3, color="C3" if s == "tdds" else f"C{i % 10}")
        ax.errorbar(xs, [100 * r["mean"] for r in rows], yerr=[100 * r["std"] for r in rows],
                    marker="o", markersize=4, capsize=3, label=s, **style)
    ax.axhline(100 * result["full_data_accuracy"], color="grey", linewidth=1, linestyle=":",
               label="full data")
    ax.set_xlabel("pruned fraction of the training set (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cfg['dataset']} ({cfg['train_samples']} train), shift ±{cfg['shift']}, "
                 f"{cfg['seeds']} seeds (mean ± std)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
