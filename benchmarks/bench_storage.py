"""Storage dtype table: state memory at ImageNet shape and score fidelity against float32.

`prev` holds log(p + 1e-8) per class (the cached log, tdds_kernels/ops/schema.py), so the half-
precision storage options are half-precision *log*-probabilities: ℓ ∈ [log 1e-8, 0] = [−18.4, 0]
has no subnormal or overflow range, and a rounding error δℓ is a relative error of e^δℓ − 1 on p
whatever p is (storing p itself in fp16 would lose every p below 6e-5 to subnormals).

Fidelity is measured on real training trajectories: an MLP trained with SGD on synthetic
classification data (scikit-learn's make_classification, label noise included) for T epochs; the
training forward pass logits of every batch feed one tracker per storage dtype (W, β = the
release defaults), and the final scores are compared with float32 storage's: Spearman rank
correlation and the overlap of the kept sets at 30/70/90% pruning. For scale, the same numbers
for float32 storage against a second training run that differs only in its seed (run-to-run
variation that pruning already lives with).

    python benchmarks/bench_storage.py --out benchmarks/results/storage.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)
from scipy.stats import spearmanr
from sklearn.datasets import make_classification

import tdds_kernels as tk

STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRUNE = (0.3, 0.7, 0.9)
IMAGENET = dict(n=1_281_167, c=1000, w=10)


def state_bytes(n, c, w, storage):
    """prev (N, C) storage + seen int32 + ring (N, W−1) fp32 + score fp32 (+ 5 int64 counters)."""
    return n * c * storage.itemsize + n * 4 + n * (w - 1) * 4 + n * 4 + 5 * 8


def train_and_track(n, c, epochs, window, seed, data_seed, batch=128, hidden=256, backend="reference"):
    """Trains an MLP for `epochs`; every batch's logits go to one tracker per storage dtype.
    Returns {storage name: final scores (N,) float64 numpy}."""
    x, y = make_classification(
        n_samples=n,
        n_features=64,
        n_informative=32,
        n_redundant=8,
        n_classes=c,
        n_clusters_per_class=2,
        class_sep=1.5,
        flip_y=0.1,
        random_state=data_seed,
    )
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, c),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    trackers = {
        name: tk.TDDSTracker(n, c, window=window, decay=0.9, trajectory_len=epochs, storage_dtype=dt, backend=backend)
        for name, dt in STORAGE.items()
    }
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch):
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            for t in trackers.values():
                t.update(logits.detach(), idx)
        sched.step()
        for t in trackers.values():
            t.end_epoch()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return {name: t.scores().double().numpy() for name, t in trackers.items()}, acc


def fidelity(a, b):
    """Spearman of b against a, kept-set overlaps, and max |b − a| / max |a|."""
    out = {"spearman": spearmanr(a, b).statistic}
    for f in PRUNE:
        ka = set(tk.select(torch.from_numpy(a), prune_fraction=f).tolist())
        kb = set(tk.select(torch.from_numpy(b), prune_fraction=f).tolist())
        out[f] = len(ka & kb) / len(ka)
    out["maxrel"] = float(np.max(np.abs(b - a)) / np.max(np.abs(a)))
    return out


FIDELITY_HEAD = "Spearman | kept overlap 30% | 70% | 90% | max abs. diff / max score"


def fidelity_cells(f, digits=4):
    """fidelity()'s result as table cells, in FIDELITY_HEAD's order (its PRUNE keys as numbers,
    or as strings once read back from JSON)."""
    kept = " | ".join(f"{f[p] if p in f else f[str(p)]:.2%}" for p in PRUNE)
    return f"{f['spearman']:.{digits}f} | {kept} | {f['maxrel']:.1e}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--classes", default="10,100,1000", help="class counts, one trajectory each")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on shared machines)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    gib = 1e9
    lines = [
        f"Machine: {describe()}; torch {torch.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"State memory at ImageNet shape (N = {IMAGENET['n']:,}, C = {IMAGENET['c']}, "
        f"W = {IMAGENET['w']}): prev + seen + ring + score.",
        "",
        "| storage of prev (log p) | prev | whole state | ratio |",
        "|---|---:|---:|---:|",
    ]
    full = state_bytes(IMAGENET["n"], IMAGENET["c"], IMAGENET["w"], torch.float32)
    for name, dt in STORAGE.items():
        total = state_bytes(IMAGENET["n"], IMAGENET["c"], IMAGENET["w"], dt)
        prev = IMAGENET["n"] * IMAGENET["c"] * dt.itemsize
        lines.append(f"| {name} | {prev / gib:.2f} GB | {total / gib:.2f} GB | {total / full:.2f} |")
    lines += [
        "",
        "Fidelity of the final scores against float32 storage (T = "
        f"{a.epochs}, W = {a.window}, β = 0.9; N = {a.samples:,} samples of synthetic "
        "classification data with 10% flipped labels, 3-layer MLP trained with SGD).",
        "",
        f"| C | train acc | storage | {FIDELITY_HEAD} |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in (int(v) for v in a.classes.split(",")):
        t0 = time.perf_counter()
        scores, acc = train_and_track(a.samples, c, a.epochs, a.window, seed=0, data_seed=c)
        other, _ = train_and_track(a.samples, c, a.epochs, a.window, seed=1, data_seed=c)
        rows = [(name, fidelity(scores["float32"], scores[name])) for name in ("bfloat16", "float16")]
        rows.append(("float32, another training seed (scale)", fidelity(scores["float32"], other["float32"])))
        for name, r in rows:
            lines.append(f"| {c} | {acc:.1%} | {name} | {fidelity_cells(r, 6)} |")
        print(f"C={c}: {time.perf_counter() - t0:.0f} s", flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
