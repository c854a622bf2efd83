"""Compressed previous row (prev_topk=K, docs/design.md §2.1): fidelity, memory and speed.

Fidelity on real training trajectories: a 2-layer MLP trained with Adam on a synthetic
many-class task (class prototypes plus noise, 10% of the labels flipped) for T epochs; every
training batch's logits feed one tracker with full rows and one per K (the C++ cpu backend).
Final scores are compared with the full rows' by Spearman rank correlation, the overlap of the
kept sets at 30/70/90% pruning, and max |difference| / max |score|; for scale, the same numbers
for full rows against a second training run that differs only in its seed. The constructed
worst case: logits that stay near-flat over all C classes (a small random walk), so the mass
is spread over many more classes than any K keeps.

Memory: bytes per sample of each state (declared dtypes: tdds_kernels.core.state), and the
state at ImageNet-21k shape. Speed: the update time per row, K against full rows, measured in the
same run (ratios are what carries over to another machine), in training's steady state (every
row scored against its previous row, logits drifting between epochs: see part_speed): the cpu
backend at C = 1,000 and 21,841, or with --device cuda the triton and cuda backends at
C = 21,841, B = 1,024.

Sized for a shared 2-core machine: each invocation does one part and stays around a minute;
--json collects the parts, --report writes the table from them.

    python benchmarks/bench_topk.py --part train --classes 1000 --json /tmp/topk.json
    python benchmarks/bench_topk.py --part flat --json /tmp/topk.json
    python benchmarks/bench_topk.py --part speed --json /tmp/topk.json
    python benchmarks/bench_topk.py --part speed --device cuda --json /tmp/topk_gpu.json   # triton, cuda
    (benchmarks/gpu_check.sh runs the last with --budget-s and --report --out topk_<card>.md)
    python benchmarks/bench_topk.py --report --json /tmp/topk.json --out benchmarks/results/topk.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import tdds_kernels as tk
from tdds_kernels.core.config import TrackerConfig
from tdds_kernels.core.state import tensor_specs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_storage import FIDELITY_HEAD, fidelity, fidelity_cells  # noqa: E402  (the same metrics as storage.md)
from machine import describe  # noqa: E402

KS = (8, 32, 128)
IMAGENET21K = dict(n=14_197_122, c=21_841, w=10)


def per_sample_bytes(c, k, w, storage):
    """Bytes per sample of every per-sample tensor of a tracker's state (its declared dtypes)."""
    specs = tensor_specs(TrackerConfig(1, c, window=w, trajectory_len=None, storage_dtype=storage, prev_topk=k))
    return sum(int(np.prod(shape)) * dtype.itemsize for name, (shape, dtype) in specs.items() if "counters" not in name)


def trackers(n, c, epochs, window, ks=KS):
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in (None, *ks):
            if k is None or k < c:
                out[k] = tk.TDDSTracker(n, c, window=window, trajectory_len=epochs, backend="cpu", prev_topk=k)
    return out


class TrainingRun:
    """The fidelity part's run: an MLP trained with Adam on the task with C classes (class
    prototypes plus noise, a `noise` share of the labels flipped). The task depends on C only,
    the run on `seed`; the order of random draws fixes the trajectories (the study of richer
    summaries, study_topk_summary.py, replays them)."""

    def __init__(self, n, c, seed, batch=128, hidden=64, noise=0.1):
        g = torch.Generator().manual_seed(c)
        dim = 64
        protos = torch.randn(c, dim, generator=g)
        y = torch.randint(0, c, (n,), generator=g)
        self.x = protos[y] + 0.7 * torch.randn(n, dim, generator=g)
        flip = torch.rand(n, generator=g) < noise
        self.y = torch.where(flip, torch.randint(0, c, (n,), generator=g), y)
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, c))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)
        self.n, self.batch = n, batch

    def epoch(self):
        """One epoch: yields (index, training logits) per batch, after its step."""
        for idx in torch.randperm(self.n).split(self.batch):
            logits = self.model(self.x[idx])
            loss = F.cross_entropy(logits, self.y[idx])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            yield idx, logits.detach()

    def accuracy(self) -> float:
        with torch.no_grad():
            return (self.model(self.x).argmax(1) == self.y).float().mean().item()


def train_and_track(n, c, epochs, window, seed, ks=True, batch=128, hidden=64, noise=0.1):
    """Trains an MLP for `epochs` on the task with C classes; returns ({K or None: scores}, acc,
    mean top-K mass of the last epoch's softmax per K)."""
    run = TrainingRun(n, c, seed, batch, hidden, noise)
    tr = trackers(n, c, epochs, window, KS if ks else ())
    mass = {}
    for e in range(epochs):
        for idx, logits in run.epoch():
            for t in tr.values():
                t.update(logits, idx)
            if e == epochs - 1:
                p = torch.softmax(logits, 1).sort(1, descending=True).values
                for k in KS:
                    mass.setdefault(k, []).append(p[:, :k].sum(1))
        for t in tr.values():
            t.end_epoch()
    kept_mass = {k: float(torch.cat(v).mean()) for k, v in mass.items()}
    return {k: t.scores().double().numpy() for k, t in tr.items()}, run.accuracy(), kept_mass


def part_train(c, n, epochs, window):
    t0 = time.perf_counter()
    scores, acc, mass = train_and_track(n, c, epochs, window, seed=0)
    other, _, _ = train_and_track(n, c, epochs, window, seed=1, ks=False)
    rows = [(f"K = {k}", fidelity(scores[None], scores[k]), mass[k]) for k in KS if k in scores]
    rows.append(("full rows, another training seed (scale)", fidelity(scores[None], other[None]), None))
    return {"c": c, "n": n, "epochs": epochs, "window": window, "acc": acc, "rows": rows, "s": time.perf_counter() - t0}


def part_flat(c, n, epochs, window, scale=0.3):
    """Logits near flat over all C classes, drifting: the mass of every row is spread out."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(n, c, generator=g) * scale
    tr = trackers(n, c, epochs, window)
    mass = {}
    for _ in range(epochs):
        base = base + torch.randn(n, c, generator=g) * scale
        for idx in torch.randperm(n, generator=g).split(256):
            for t in tr.values():
                t.update(base[idx], idx)
        for t in tr.values():
            t.end_epoch()
    p = torch.softmax(base, 1).sort(1, descending=True).values
    mass = {k: float(p[:, :k].sum(1).mean()) for k in KS}
    scores = {k: t.scores().double().numpy() for k, t in tr.items()}
    rows = [(f"K = {k}", fidelity(scores[None], scores[k]), mass[k]) for k in KS if k in scores]
    return {"c": c, "n": n, "epochs": epochs, "window": window, "scale": scale, "rows": rows}


CALLS = 8  # batches per epoch in the speed part
SCALE, DRIFT = 6.0, 0.6  # the speed part's logits: N(0, SCALE^2), then a random walk of DRIFT per epoch
SPEED_EPOCHS = 4  # timed epochs, after an untimed first one


def part_speed(device="cpu", backends=None, on_row=lambda rows: None, budget_s=None):
    """Median update time per row, full rows and each K in the same run, per backend: on CPU the
    cpu backend (one thread) at C = 1,000 and 21,841, B = 512 and 64; on CUDA the triton and
    cuda backends at C = 21,841, B = 1,024.

    As in training: each epoch feeds every sample once, in CALLS batches of a fresh permutation,
    so every timed row has a previous row to score against; a sample's logits drift between
    epochs (a random walk of DRIFT, a tenth of their SCALE), so its kept classes mostly stay, and
    are peaked about as trained logits are (the mean kept mass is in the row, beside the fidelity
    part's, from real training). SPEED_EPOCHS epochs are timed after an untimed first one, each
    without its first call (which also looks at the batch for probabilities, once per epoch).
    CPU: thread CPU time, which a shared machine's other jobs do not inflate; CUDA: wall time
    with a synchronize around each call. on_row(rows so far) after each K, so
    that a run cut short keeps what it measured; past budget_s seconds no further K is started
    (its cell says so)."""
    start = time.perf_counter()
    if device == "cpu":
        shapes, backends = ((1000, 512), (21_841, 64)), backends or ("cpu",)
        clock, sync = time.thread_time, (lambda: None)
    else:
        shapes, backends = ((21_841, 1024),), backends or ("triton", "cuda")
        clock, sync = time.perf_counter, torch.cuda.synchronize
    out = []
    for backend in backends:
        for c, b in shapes:
            n = CALLS * b
            row = {"c": c, "b": b, "backend": backend, "device": device}
            for k in (None, *KS):
                if budget_s is not None and time.perf_counter() - start > budget_s:
                    row[str(k)], row["why"] = None, f"not started: past the {budget_s:g} s budget"
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        t = tk.TDDSTracker(
                            n, c, window=5, trajectory_len=None, device=device, backend=backend, prev_topk=k
                        )
                except ValueError as exc:  # a backend without this kernel here
                    row[str(k)], row["why"] = None, str(exc)
                    continue
                g = torch.Generator(device).manual_seed(0)  # the same logits for every K
                z = torch.randn(n, c, device=device, generator=g) * SCALE
                times, mass = [], []
                for epoch in range(SPEED_EPOCHS + 1):
                    z += DRIFT * torch.randn(n, c, device=device, generator=g)
                    perm = torch.randperm(n, device=device, generator=g)
                    for i in range(CALLS):
                        idx = perm[i * b : (i + 1) * b]
                        batch = z[idx]
                        sync()
                        t0 = clock()
                        t.update(batch, idx)
                        sync()
                        if epoch and i:
                            times.append(clock() - t0)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # the kept-mass warning: the mass is reported
                        t.end_epoch()
                    mass.append(t.stats.get("kept_mass"))
                row[str(k)] = float(np.median(times)) / b
                if k is not None:
                    row[f"kept_mass_{k}"] = float(np.mean(mass))
                del t, z
                on_row([*out, row])
            out.append(row)
    return out


def speed_lines(rows, title, load):
    lines = [f"### {title}", "", f"Load: {load}.", ""]
    lines += [
        "| backend | C | rows/call | full rows | " + " | ".join(f"K = {k}" for k in KS) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(KS),
    ]
    for r in rows:
        full = r.get("None")  # a row cut short lacks the K it did not reach
        cells = " | ".join(
            "n/a"
            if r.get(str(k)) is None or full is None
            else f"{r[str(k)] * 1e6:.2f} µs ({r[str(k)] / full:.2f}×)"
            + (f", mass {r[f'kept_mass_{k}']:.0%}" if f"kept_mass_{k}" in r else "")
            for k in KS
        )
        lines.append(
            f"| {r.get('backend', 'cpu')} | {r['c']:,} | {r['b']} | "
            f"{'n/a' if full is None else f'{full * 1e6:.2f} µs'} | {cells} |"
        )
    return lines + [""]


def report(data):
    lines = [
        f"Machine: {data.get('machine', '?')}{'; GPU ' + data['cuda_device'] if 'cuda_device' in data else ''}; "
        f"torch {torch.__version__}; {data.get('when', '?')}. "
        "Shared with other jobs while measured (load named per part below): compare ratios within a table.",
        "",
        f"### State size at ImageNet-21k shape (N = {IMAGENET21K['n']:,}, C = {IMAGENET21K['c']:,}, "
        f"W = {IMAGENET21K['w']})",
        "",
        "Per-sample tensors from their declared dtypes (prev or prev_val/prev_idx/prev_rest, seen, ring, score).",
        "",
        "| previous row | bytes/sample (bf16) | state (bf16) | bytes/sample (fp32) | state (fp32) |",
        "|---|---:|---:|---:|---:|",
    ]
    n, c, w = IMAGENET21K["n"], IMAGENET21K["c"], IMAGENET21K["w"]
    for k in (None, *KS):
        b16, b32 = per_sample_bytes(c, k, w, torch.bfloat16), per_sample_bytes(c, k, w, torch.float32)
        name = "full rows" if k is None else f"K = {k}"
        lines.append(f"| {name} | {b16:,} | {b16 * n / 1e9:,.1f} GB | {b32:,} | {b32 * n / 1e9:,.1f} GB |")
    lines += [
        "",
        "Bytes per sample at C = 1000 (W = 10): "
        + ", ".join(
            f"{'full' if k is None else f'K = {k}'} {per_sample_bytes(1000, k, 10, torch.bfloat16):,} (bf16)"
            for k in (None, *KS)
        )
        + ".",
        "",
    ]
    calls = f"median of {SPEED_EPOCHS * (CALLS - 1)} calls, steady state"
    for key, title in (
        ("speed", f"Update time per row (cpu backend, 1 thread, thread CPU time, {calls})"),
        ("speed_cuda", f"Update time per row on CUDA ({calls}, synchronized)"),
    ):
        if data.get(key):
            # each part names its own machine and time: parts of one table may come from different runs
            where = f"; {data[key + '_machine']}, {data[key + '_when']}" if key + "_machine" in data else ""
            lines += speed_lines(data[key], title + where, data.get(key + "_load", "?"))
    header = f"| C | train acc | previous row | mean kept mass | {FIDELITY_HEAD} |"
    lines += ["### Fidelity against full rows", ""]
    for key in sorted((k for k in data if k.startswith("train_")), key=lambda k: int(k.split("_")[1])):
        d = data[key]
        lines += [
            f"C = {d['c']:,}: N = {d['n']:,} samples, T = {d['epochs']}, W = {d['window']}, β = 0.9; "
            f"MLP (64 hidden) trained with Adam, 10% flipped labels; {d['s']:.0f} s, load: {d.get('load', '?')}.",
            "",
            header,
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, f, mass in d["rows"]:
            m = "" if mass is None else f"{mass:.1%}"
            lines.append(f"| {d['c']:,} | {d['acc']:.1%} | {name} | {m} | {fidelity_cells(f)} |")
        lines.append("")
    if "flat" in data:
        d = data["flat"]
        lines += [
            f"Constructed worst case, C = {d['c']:,}: logits a random walk of step {d['scale']} over all classes "
            f"(near-flat softmax), N = {d['n']:,}, T = {d['epochs']}, W = {d['window']}.",
            "",
            f"| previous row | mean kept mass | {FIDELITY_HEAD} |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, f, mass in d["rows"]:
            lines.append(f"| {name} | {mass:.1%} | {fidelity_cells(f)} |")
        lines.append("")
    return "\n".join(lines)


def add_run_arguments(ap):
    """The training run's and the collected output's options (bench_topk and the summary study)."""
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--json", required=True, help="collects the parts")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--out", default=None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("train", "flat", "speed"))
    add_run_arguments(ap)
    ap.add_argument("--load", default="?", help="what else was running (written into the table)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="--part speed: where to time")
    ap.add_argument("--budget-s", type=float, default=None, help="--part speed: start no K after this many seconds")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = json.load(open(a.json)) if os.path.exists(a.json) else {}
    data.setdefault("machine", describe())
    if a.part:  # the time of the latest measurement, not of a --report alone
        data["when"] = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    if a.part == "train":
        r = part_train(a.classes, a.samples, a.epochs, a.window)
        r["rows"] = [(name, {str(k): v for k, v in f.items()}, m) for name, f, m in r["rows"]]
        r["load"] = a.load
        data[f"train_{a.classes}"] = r
    elif a.part == "flat":
        r = part_flat(a.classes, a.samples, a.epochs, a.window)
        r["rows"] = [(name, {str(k): v for k, v in f.items()}, m) for name, f, m in r["rows"]]
        data["flat"] = r
    elif a.part == "speed":
        key = "speed" if a.device == "cpu" else "speed_cuda"
        data[key + "_load"], data[key + "_machine"] = a.load, describe(a.device)
        data[key + "_when"] = data["when"]
        if a.device == "cuda":
            data["cuda_device"] = torch.cuda.get_device_name()

        def save(rows, final=False):
            data[key] = rows
            write(data, a, final)

        save(part_speed(a.device, on_row=save, budget_s=a.budget_s), final=True)
        return
    write(data, a)


def write(data, a, final=True):
    """The JSON and (--report --out) the table, each replaced whole: a run cut short between two
    rows leaves the previous row's files, never half a file; printed once, at the end."""
    for path, text in ((a.json, json.dumps(data, indent=1, default=float)), (a.out, a.report and report(data))):
        if path and text:
            with open(path + ".tmp", "w") as fh:
                fh.write(text)
            os.replace(path + ".tmp", path)
    if not final:
        return
    if a.report:
        print(report(data))
    else:
        print(json.dumps({k: v for k, v in data.items() if k not in ("machine", "when")}, default=float)[:2000])


if __name__ == "__main__":
    main()
