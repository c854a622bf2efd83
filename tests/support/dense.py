"""An independent, dense restatement of TDDS with the semantics of docs/design.md §3, for the tests.

All epochs are held in memory as Python lists and the formula is evaluated sample by sample in
float64 (from float32 softmax, as the contract says), sharing no code with tdds_kernels.
"""

import math

import numpy as np


def _softmax32(row):
    z = np.asarray(row, dtype=np.float32)
    e = np.exp(z - z.max(), dtype=np.float32)
    return (e / e.sum(dtype=np.float32)).astype(np.float32)


def recorded_rows(epochs, num_samples):
    """Per epoch: {n: logits row} of the first finite, in-range row of each sample."""
    out = []
    for batches in epochs:
        rec = {}
        for logits, index in batches:
            for row, n in zip(np.asarray(logits, dtype=np.float32), np.asarray(index)):
                n = int(n)
                if 0 <= n < num_samples and np.isfinite(row).all() and n not in rec:
                    rec[n] = row
        out.append(rec)
    return out


def compressed_row(p, k):
    """(kept ids, their logs, the tail's log) of a float64 row p kept as its k largest entries
    (ties: lower class first) and the mean of the rest (docs/design.md §2.1), by the definition."""
    c = len(p)
    kept = sorted(range(c), key=lambda j: (-p[j], j))[:k]
    stored = set(kept)
    rest = sum(p[j] for j in range(c) if j not in stored)
    rest_log = math.log(rest / (c - k) + 1e-8) if k < c else math.log(1e-8)
    return kept, [math.log(p[j] + 1e-8) for j in kept], rest_log


def compressed_d(p_old, p_new, k):
    """d of the float64 row p_new against p_old kept as compressed_row(p_old, k), one class at a
    time: a kept class against its stored log, every other class against the old tail given the
    new row's shape at the old tail's mean (its log step is the same for every tail class)."""
    c = len(p_new)
    kept, logs, rest_log = compressed_row(p_old, k)
    d = sum(abs(p_new[j] * (math.log(p_new[j] + 1e-8) - v)) for j, v in zip(kept, logs))
    if k < c:
        stored = set(kept)
        tail = [j for j in range(c) if j not in stored]
        step = math.log(sum(p_new[j] for j in tail) / (c - k) + 1e-8) - rest_log
        d += sum(abs(p_new[j] * step) for j in tail)
    return d


def dense_scores(epochs, num_samples, window, decay, trajectory_len=None, prev_topk=None):
    """epochs: list (one per epoch) of lists of (logits (B, C), index (B,)) batches; prev_topk=K:
    the previous row compressed to K classes and a residual."""
    rec = recorded_rows(epochs, num_samples)
    t_len = len(rec) if trajectory_len is None else min(trajectory_len, len(rec))
    scores = np.zeros(num_samples)
    for n in range(num_samples):
        p = [(_softmax32(r[n]).astype(np.float64) if n in r else None) for r in rec[:t_len]]
        d = []
        for t in range(t_len - 1):
            if p[t] is None or p[t + 1] is None:
                d.append(None)
                continue
            if prev_topk is not None:
                d.append(compressed_d(p[t], p[t + 1], prev_topk))
                continue
            p_log, q_log = np.log(p[t + 1] + 1e-8), np.log(p[t] + 1e-8)
            d.append(float(np.sum(np.abs(p[t + 1] * (p_log - q_log)))))
        s = 0.0
        for k in range(t_len - window + 1):
            vals = [v for v in d[k : k + window - 1] if v is not None]
            if len(vals) >= 2:
                m = sum(vals) / len(vals)
                r = math.sqrt(sum((v - m) ** 2 for v in vals))
            else:
                r = 0.0
            s = (1 - decay) * s + decay * r
        scores[n] = s
    return scores
