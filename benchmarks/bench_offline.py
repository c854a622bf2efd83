"""Offline scoring as whole processes: `tdds-kernels score` vs the release-style loop.

Generates a CIFAR-100-sized dump folder (default N=50,000, C=100, T=30, W=10) with a realistic
trajectory (logits drifting toward each sample's label at a per-sample pace, with noise), then
runs each scorer as its own process and reports wall time, peak RSS (wait4), the speedup and
memory ratio against the release-style loop, and the logits' read rate as a fraction of this
machine's copy bandwidth measured in the same run. Checks every scorer agrees with the
release-style loop (rtol 1e-5).

    python benchmarks/bench_offline.py [--n 50000] [--out benchmarks/results/offline_<machine>.md]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe  # noqa: E402  (benchmarks/machine.py, beside this script)

HERE = Path(__file__).resolve().parent


def make_dump(folder: Path, n, c, t, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    pace = rng.gamma(2.0, 1.0, n).astype(np.float32)[:, None]  # per-sample learning speed
    start = rng.normal(size=(n, c)).astype(np.float32)
    target = np.zeros((n, c), np.float32)
    target[np.arange(n), labels] = 8.0
    for e in range(t):
        w = 1.0 - np.exp(-pace * (e + 1) / t * 3.0)
        logits = (1 - w) * start + w * target + rng.normal(size=(n, c)).astype(np.float32) * 0.5
        order = rng.permutation(n)  # loader order
        np.save(folder / f"{e}_Output.npy", logits[order].astype(np.float32))
        np.save(folder / f"{e}_Index.npy", order.astype(np.int64))
        np.save(folder / f"{e}_Loss.npy", np.zeros(n, np.float32))


def run_process(cmd):
    """Run cmd; return (wall seconds, peak RSS in MiB) of that process alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONWARNINGS="ignore")
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_maxrss / 1024


def copy_bandwidth_gbs(nbytes=256 << 20, repeats=5):
    """Read+write bytes per second of a large torch copy on this machine (best of repeats)."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--c", type=int, default=100)
    ap.add_argument("--t", type=int, default=30)
    ap.add_argument("--w", type=int, default=10)
    ap.add_argument("--beta", type=float, default=0.9)
    ap.add_argument("--backends", default="auto,reference", help="comma list for tdds-kernels score")
    ap.add_argument("--repeats", type=int, default=2, help="runs per scorer; the best is reported")
    ap.add_argument("--dir", help="keep the dump here (default: a temporary folder)")
    ap.add_argument("--out", help="write the markdown table here too")
    args = ap.parse_args()

    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tdds_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if not (tmp / f"{args.t - 1}_Output.npy").is_file():
            print(f"generating N={args.n} C={args.c} T={args.t} dump in {tmp} ...", flush=True)
            make_dump(tmp, args.n, args.c, args.t)
        common = [str(args.t), str(args.w), str(args.beta)]
        release_out = tmp / "release_scores.npy"
        rows = []
        best = min(
            (
                run_process([sys.executable, str(HERE / "release_style.py"), str(tmp), *common, str(release_out)])
                for _ in range(args.repeats)
            ),
            key=lambda r: r[0],
        )
        rows.append(("release-style loop (all epochs in RAM)", *best))
        reference = np.load(release_out)
        for backend in args.backends.split(","):
            out = tmp / f"out_{backend}"
            cmd = [
                sys.executable,
                "-m",
                "tdds_kernels",
                "score",
                str(tmp),
                "-T",
                str(args.t),
                "-W",
                str(args.w),
                "-b",
                str(args.beta),
                "--out",
                str(out),
                "--backend",
                backend,
                "--no-progress",
            ]
            best = min((run_process(cmd) for _ in range(args.repeats)), key=lambda r: r[0])
            got = np.load(out / "scores.npy")
            np.testing.assert_allclose(
                got, reference, rtol=1e-5, atol=1e-6, err_msg=f"backend {backend} disagrees with the release-style loop"
            )
            rows.append((f"tdds-kernels score --backend {backend}", *best))
        # The interpreter + torch import alone (~1.2 s, ~220 MiB here) bounds every whole-process
        # number; report it, and memory above it, so the working-set ratio is visible too.
        floor = min(
            (run_process([sys.executable, "-c", "import torch, numpy, tdds_kernels.cli"]) for _ in range(args.repeats)),
            key=lambda r: r[0],
        )
        bw = copy_bandwidth_gbs()
        logit_bytes = args.n * args.c * 4 * args.t
        base_t, base_m = rows[0][1], rows[0][2]
        lines = [
            f"# Offline scoring, N={args.n}, C={args.c}, T={args.t}, W={args.w}, beta={args.beta}",
            "",
            f"Machine: {describe()}; torch copy bandwidth measured in this run: {bw:.1f} GB/s (read+write).",
            "",
            "| scorer | wall (s) | peak RSS (MiB) | speedup vs release | peak RSS vs release | "
            "RSS above import vs release | logits read rate / copy bandwidth |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, wall, rss in rows:
            lines.append(
                f"| {name} | {wall:.2f} | {rss:.0f} | {base_t / wall:.2f}x | {rss / base_m:.3f} | "
                f"{(rss - floor[1]) / (base_m - floor[1]):.3f} | {logit_bytes / wall / 1e9 / bw:.1%} |"
            )
        lines.append(
            f"| (import floor: `import torch, numpy, tdds_kernels.cli`) | {floor[0]:.2f} | {floor[1]:.0f} | | | | |"
        )
        lines.append("")
        lines.append(
            f"Whole processes, best of {args.repeats} runs each; every scorer's scores agree with the "
            "release-style loop within rtol 1e-5."
        )
        table = "\n".join(lines)
        print(table)
        if args.out:
            Path(args.out).write_text(table + "\n")
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
