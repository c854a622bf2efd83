"""Study: richer O(K) summaries of the compressed previous row, at equal bytes.

`prev_topk=K` stores the K largest logs and ids plus one residual r = log(mean tail p + ε) and
evaluates d with log q_c = r for every class outside the kept set. Here other summaries of the
previous row are evaluated in pure PyTorch on the same trajectories as bench_topk.py (its MLP
training run and its flat worst case), and their final scores compared with full rows'.

Bytes of the previous row per sample (bf16 values, int16 ids, one bf16 residual), K = budget:
(a) and (b) 4K + 2; (c) and (e) 4·K1 + 2·K2 + 2 + 2 = 4K + 2; (d) 4(K − 1) + 2 + 2 = 4K.

    (a) flat       K entries; tail log q_c = r (the summary before (b) was adopted)
    (b) shape      (a)'s bytes; tail q_c = p_new,c · m_old / m_new: the new row's tail shape at
                   the old tail mass (m_old = (e^r − ε)(C − K), already implied by r)
    (c) tiers      K1 entries; K2 ids only sharing one log-mean value; r for the rest
    (e) tiers+shape (c)'s bytes; each coarse group rescaled as in (b) with its own old mass
    (d) tempered   K − 1 entries; the tail's mass and mean log(p + ε): tail q_c ∝ p_new,c^b at the
                   old mass, b fitted so the tail's mean log(q + ε) equals the stored one

Every stored value is rounded to bfloat16 (the bytes counted); "(a) fp32" is bench_topk's
setting (float32 storage) with the flat summary the package used before it adopted (b), a
cross-check against the fidelity bench_topk measured then. The
full-row scores come from TDDSTracker(backend="reference"); the summaries' d go through the
package's own record/epoch_step reference ops, so only the previous row differs.

    python benchmarks/study_topk_summary.py --part train --classes 1000 --json /tmp/s.json
    python benchmarks/study_topk_summary.py --part flat --json /tmp/s.json
    python benchmarks/study_topk_summary.py --report --json /tmp/s.json --out benchmarks/results/topk_summary_study.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass

import torch

import tdds_kernels as tk
from tdds_kernels.ops.reference import contribution, epoch_step, record
from tdds_kernels.ops.schema import EPOCH, EPS, NUM_SLOTS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_storage import FIDELITY_HEAD, fidelity, fidelity_cells  # noqa: E402  (the metrics of storage.md and topk_*.md)
from bench_topk import KS, TrainingRun, add_run_arguments  # noqa: E402
from machine import describe  # noqa: E402

BLOCK = 256  # rows per block: a few (BLOCK, C) float32 temporaries at a time


@dataclass(frozen=True)
class Summary:
    """fine: classes stored exactly (value + id); tier2: ids only, one shared value; the rest is
    the tail. rule: how a coarse group's q is modelled ("flat", "shape" or "temper")."""

    name: str
    budget: int  # the K whose bytes (4K + 2) this summary spends
    fine: int
    tier2: int = 0
    rule: str = "flat"
    store: torch.dtype = torch.bfloat16

    @property
    def key(self) -> str:
        return f"K{self.budget} {self.name}"

    def bytes(self) -> int:
        extra = 2 if self.rule == "temper" else 0  # the stored mean log of the tail
        return 4 * self.fine + 2 * self.tier2 + 2 * (self.tier2 > 0) + 2 + extra


def summaries(k: int, c: int) -> list[Summary]:
    """The summaries at the byte budget of K (4K + 2), classes capped at C."""
    out = [
        Summary("(a) flat, fp32 (bench_topk)", k, k, store=torch.float32),
        Summary("(a) flat", k, k),
        Summary("(b) shape", k, k, rule="shape"),
    ]
    for frac in (2, 4):  # half or a quarter of the budget's entries kept fine
        k1 = k // frac
        k2 = (4 * k - 2 - 4 * k1) // 2
        if k1 >= 1 and k1 + k2 < c:
            out.append(Summary(f"(c) tiers {k1}+{k2}", k, k1, k2))
            out.append(Summary(f"(e) tiers+shape {k1}+{k2}", k, k1, k2, rule="shape"))
    if k > 1:
        out.append(Summary("(d) tempered", k, k - 1, rule="temper"))
    return out


def _q(x, dtype):
    """x as stored in `dtype` and read back as float32."""
    return x.to(dtype).to(torch.float32)


def _temper(lsm, mass, target, iters=12):
    """log q (R, M) of a group given its classes' new log p (R, M): q ∝ p^b at the old `mass`, b
    so that the mean log(q + ε) equals `target`. That mean falls as b grows (b = 0: uniform), so
    Newton's method from b = 1 (an unchanged shape) kept inside a bisection bracket [0, 4]."""

    def at(b):
        z = b[:, None] * lsm
        s = torch.softmax(z, 1)
        q = mass[:, None] * s
        log_q = torch.log(q + EPS)
        # d/db log(q_c + ε) = q_c / (q_c + ε) · (ℓ_c − Σ_j s_j ℓ_j)
        slope = (q / (q + EPS) * (lsm - (s * lsm).sum(1, keepdim=True))).mean(1)
        return log_q.mean(1) - target, slope, log_q

    lo, hi, b = torch.zeros_like(mass), torch.full_like(mass, 4.0), torch.ones_like(mass)
    for _ in range(iters):
        f, slope, _ = at(b)
        lo, hi = torch.where(f > 0, b, lo), torch.where(f > 0, hi, b)  # f > 0: too flat, b must grow
        step = b - f / slope
        inside = (step > lo) & (step < hi) & (slope < 0)
        b = torch.where(inside, step, (lo + hi) / 2)
    return at(b)[2]


def summary_d(s: Summary, old, new) -> torch.Tensor:
    """d of rows `new` against the summary `s` of rows `old`; each a (x logits, p, log(p + ε))
    triple of (R, C) float32, old also with `rank` (R, C), each class's place in the old row
    (descending p, ties to the lower id: reference_topk.compress's order) and `order`, its inverse."""
    (_, p_old, lp_old, rank, order), (x_new, p_new, lp_new) = old, new
    c = p_old.shape[1]
    k1, k2 = min(s.fine, c), min(s.tier2, c - min(s.fine, c))
    log_q = _q(lp_old, s.store)  # the fine entries; the coarse groups are overwritten below
    groups = [(rank >= k1) & (rank < k1 + k2), rank >= k1 + k2] if k2 else [rank >= k1]
    for g in groups:
        n = g.sum(1)
        if not bool(n.any()):
            continue
        m = torch.where(g, p_old.double(), 0).sum(1)  # float64: see reference_topk.compress
        stored = _q(torch.log((m / n.clamp(min=1)).float() + EPS), s.store)  # the 2-byte r of the group
        if s.rule == "flat":
            log_q = torch.where(g, stored[:, None], log_q)
            continue
        m_old = ((stored.exp() - EPS).clamp(min=0) * n)[:, None]  # the mass r stands for
        if s.rule == "shape":
            m_new = torch.where(g, p_new.double(), 0).sum(1).float().clamp(min=1e-30)[:, None]
            log_q = torch.where(g, torch.log(p_new * (m_old / m_new) + EPS), log_q)
        else:
            # the group is a range of old ranks: its classes gathered, dense, for the iterations
            cols = order[:, k1 + k2 :] if g is groups[-1] else order[:, k1 : k1 + k2]
            target = _q(lp_old.gather(1, cols).mean(1), s.store)
            tempered = _temper(torch.log_softmax(x_new, 1).gather(1, cols), m_old[:, 0], target)
            log_q = log_q.scatter(1, cols, tempered)
    return contribution(p_new, lp_new, log_q)


def rows_of(x):
    p = torch.softmax(x, 1)
    return x, p, torch.log(p + EPS)


def with_rank(rows):
    x, p, lp = rows
    order = torch.sort(p, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(p.shape[1]).expand_as(order).contiguous())
    return x, p, lp, rank, order


class ScoreState:
    """One tracker's per-sample state driven by given d's through the reference ops."""

    def __init__(self, n, window):
        self.seen = torch.full((n,), -1, dtype=torch.int32)
        self.ring = torch.full((n, window - 1), float("nan"))
        self.score = torch.zeros(n)
        self.counters = torch.zeros(NUM_SLOTS, dtype=torch.int64)

    def epoch(self, d, decay):
        n = torch.arange(d.shape[0])
        record(d, n, self.counters[EPOCH].to(torch.int32), self.seen, self.ring)
        epoch_step(self.seen, self.ring, self.score, self.counters, decay)


def score_epochs(epochs, c, n, window, specs, trajectory, decay=0.9):
    """Feeds the (N, C) logits of each epoch from the iterator `epochs` to a full-row reference
    tracker and, as d, to one ScoreState per summary (plus one for full rows, as a check of the
    d → score path). Returns ({name: scores float64 numpy}, full-row scores, max |own full − tracker|)."""
    full = tk.TDDSTracker(n, c, window=window, decay=decay, trajectory_len=trajectory, backend="reference")
    states = {s.key: ScoreState(n, window) for s in specs} | {"full": ScoreState(n, window)}
    prev = None
    for x in epochs:
        d = {name: torch.full((n,), float("nan")) for name in states}
        for lo in range(0, n, BLOCK):
            rows = torch.arange(lo, min(lo + BLOCK, n))
            new = rows_of(x[rows])
            full.update(x[rows], rows)
            if prev is not None:
                old = with_rank(rows_of(prev[rows]))
                d["full"][rows] = contribution(new[1], new[2], old[2])
                for s in specs:
                    d[s.key][rows] = summary_d(s, old, new)
        full.end_epoch()
        for name, st in states.items():
            st.epoch(d[name], decay)
        prev = x
    truth = full.scores()
    check = float((states["full"].score - truth).abs().max())
    out = {name: st.score.double().numpy() for name, st in states.items() if name != "full"}
    return out, truth.double().numpy(), check


def train_epochs(n, c, epochs, seed=0, batch=128, hidden=64, noise=0.1, acc=None):
    """bench_topk's training run, yielding each epoch's training logits (N, C) by sample: the
    same trajectories as its fidelity part."""
    run = TrainingRun(n, c, seed, batch, hidden, noise)
    for _ in range(epochs):
        out = torch.empty(n, c)
        for idx, logits in run.epoch():
            out[idx] = logits
        yield out
    if acc is not None:
        acc.append(run.accuracy())


def flat_epochs(n, c, epochs, scale=0.3):
    """bench_topk.part_flat's logits (the same generator draws, the permutation included)."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(n, c, generator=g) * scale
    for _ in range(epochs):
        base = base + torch.randn(n, c, generator=g) * scale
        torch.randperm(n, generator=g)  # drawn by part_flat for its batch order
        yield base


def kept_mass(x, k):
    return float(torch.softmax(x, 1).topk(k, 1).values.sum(1).mean())


def run_part(kind, c, n, epochs, window, ks=KS):
    t0 = time.perf_counter()
    ks = [k for k in ks if k < c]
    specs = [s for k in ks for s in summaries(k, c)]
    last, acc = [], []

    def keep_last(it):
        for x in it:
            last[:] = [x]
            yield x

    src = train_epochs(n, c, epochs, acc=acc) if kind == "train" else flat_epochs(n, c, epochs)
    scores, truth, check = score_epochs(keep_last(src), c, n, window, specs, epochs)
    rows = []
    for k in ks:
        for s in summaries(k, c):
            f = fidelity(truth, scores[s.key])
            rows.append({"k": k, "name": s.name, "bytes": s.bytes(), **{str(a): v for a, v in f.items()}})
    return {
        "kind": kind,
        "c": c,
        "n": n,
        "epochs": epochs,
        "window": window,
        "acc": acc[0] if acc else None,
        "mass": {str(k): kept_mass(last[0], k) for k in ks},
        "check": check,
        "rows": rows,
        "s": time.perf_counter() - t0,
    }


def report(data):
    lines = [
        f"Machine: {data['machine']}; torch {torch.__version__}; 1 thread; {data['when']}.",
        "",
        "Scores from each summary of the previous row against full rows (TDDSTracker, reference backend, "
        "float32). Bytes: the previous row's bytes per sample (bf16 values, int16 ids, bf16 residuals); "
        "each K's summaries have the same bytes as (a) except (d), 2 bytes fewer. (a) fp32 is bench_topk's "
        "float32 storage (4 more bytes per entry): where N is bench_topk's it is the same run, and "
        "its row equals the flat summary's rows bench_topk measured before (b) was adopted.",
        "",
    ]
    parts = [k for k in data if k.startswith(("train_", "flat_"))]
    for key in sorted(parts, key=lambda k: (k.startswith("flat_"), int(k.split("_")[1]))):
        d = data[key]
        what = (
            f"MLP training run of bench_topk (train acc {d['acc']:.1%})"
            if d["kind"] == "train"
            else "flat worst case of bench_topk (random walk of step 0.3 over all classes)"
        )
        mass = ", ".join(f"K = {k}: {m:.1%}" for k, m in d["mass"].items())
        lines += [
            f"### C = {d['c']:,}, {what}",
            "",
            f"N = {d['n']:,}, T = {d['epochs']}, W = {d['window']}, β = 0.9; mean top-K mass of the last "
            f"epoch: {mass}. {d['s']:.0f} s (all K, making the logits included). The d → score path's full rows "
            f"match the tracker's to {d['check']:.1e}.",
            "",
            f"| K | summary | bytes | {FIDELITY_HEAD} |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in d["rows"]:
            lines.append(f"| {r['k']} | {r['name']} | {r['bytes']} | {fidelity_cells(r, 5)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("train", "flat"))
    add_run_arguments(ap)
    ap.add_argument("--ks", default=",".join(map(str, KS)), help="budgets K of this invocation (parts merge)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = json.load(open(a.json)) if os.path.exists(a.json) else {}
    if a.part:  # the machine and time of the latest measurement (not of a --report alone)
        data["machine"] = describe()
        data["when"] = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
        r = run_part(a.part, a.classes, a.samples, a.epochs, a.window, [int(k) for k in a.ks.split(",")])
        key = f"{a.part}_{a.classes}"
        if key in data and (data[key]["n"], data[key]["epochs"]) == (r["n"], r["epochs"]):
            # another K of the same run (deterministic: the same logits): merge, K in order
            old = data[key]
            r["rows"] = sorted(
                [x for x in old["rows"] if x["k"] not in {y["k"] for y in r["rows"]}] + r["rows"],
                key=lambda x: x["k"],
            )
            r["mass"] = {**old["mass"], **r["mass"]}
            r["s"] += old["s"]
            r["check"] = max(r["check"], old["check"])
        data[key] = r
        print(json.dumps({k: v for k, v in r.items() if k != "rows"}), f"{r['s']:.0f} s")
    with open(a.json, "w") as fh:
        json.dump(data, fh, indent=1, default=float)
    if a.report:
        text = report(data)
        print(text)
        if a.out:
            with open(a.out, "w") as fh:
                fh.write(text + "\n")


if __name__ == "__main__":
    main()
