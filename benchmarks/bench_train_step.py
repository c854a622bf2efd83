"""What the tracker costs a real training step: ResNet-50 at ImageNet shape, with and without it.

One training step = forward + backward + SGD step of a torchvision ResNet-50 (random init,
channels_last, bf16 autocast) on a batch of random 224x224 images, timed with and without
``tracker.update(logits, index)`` on a TDDSTracker of ImageNet's shape (N = 1,281,167 samples,
C = 1000 classes). Reports the median step time of each, the tracker's share of the step, the
update alone on the same logits, and end_epoch (once per epoch) against an epoch of steps.
On CUDA every time comes from CUDA events; on CPU from the wall clock.

    python benchmarks/bench_train_step.py                       # cuda, batch 256, 224x224
    python benchmarks/bench_train_step.py --device cpu --batch 8 --size 64 --samples 10000 --model small

torchvision missing: --model resnet50 (the default) prints why and exits 0 without a table;
--model small runs a small CNN defined here instead, labelled as such in every line it writes
(a smoke test of the harness, not the figure users care about).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch
from torch import nn

import tdds_kernels as tk

IMAGENET_N, IMAGENET_C = 1_281_167, 1000


class SmallCNN(nn.Module):
    """Fallback when torchvision is absent: four strided convolutions and a linear head."""

    def __init__(self, num_classes):
        super().__init__()
        layers, ch = [], 3
        for out in (32, 64, 128, 256):
            layers += [
                nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def make_model(name, num_classes):
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(
            weights=None, num_classes=num_classes
        ), f"torchvision {torchvision.__version__} ResNet-50 (random init)"
    return SmallCNN(num_classes), "SMALL FALLBACK CNN (not ResNet-50: torchvision absent or --model small)"


class Timer:
    """Per-step times: CUDA events on CUDA (no sync inside the timed loop), else wall clock."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.pending, self.cpu_times = [], []

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.pending.append((start, end))
        else:
            t0 = time.perf_counter()
            fn()
            self.cpu_times.append(time.perf_counter() - t0)

    def seconds(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [s.elapsed_time(e) / 1e3 for s, e in self.pending]
        return list(self.cpu_times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=["resnet50", "small"], default="resnet50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224, help="image side")
    ap.add_argument("--samples", type=int, default=IMAGENET_N, help="tracker N (default: ImageNet)")
    ap.add_argument("--classes", type=int, default=IMAGENET_C)
    ap.add_argument("--storage", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--backend", default="auto", help="tracker backend")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 20 cuda, 3 cpu)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 cuda, 1 cpu)")
    ap.add_argument("--no-amp", action="store_true", help="no bf16 autocast")
    ap.add_argument("--budget-s", type=float, default=None, help="fewer timed steps if the run would pass this")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    t_start = time.monotonic()

    if a.model == "resnet50":
        try:
            import torchvision  # noqa: F401
        except ImportError:
            print(
                "bench_train_step: skipped: torchvision is not installed (needed for ResNet-50); "
                "--model small runs a small CNN defined here instead"
            )
            return 0
    steps = a.steps or (20 if cuda else 3)
    warmup = a.warmup if a.warmup is not None else (5 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True

    model, model_label = make_model(a.model, a.classes)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(a.batch, 3, a.size, a.size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, a.classes, (a.batch,), device=device)
    tracker = tk.TDDSTracker(
        a.samples,
        a.classes,
        device=device,
        backend=a.backend,
        storage_dtype=getattr(torch, a.storage),
        trajectory_len=None,
        on_nonfinite="skip",
    )  # a diverging random model must not stop the timing
    order = torch.randperm(a.samples, device=device)
    cursor = [0]
    last_logits = [None]

    def next_index():
        # Distinct samples, as an epoch's sampler gives; wraps around (as a new epoch would not,
        # but the first occurrence rule then just counts duplicates: same work per row).
        start = cursor[0] % max(1, a.samples - a.batch)
        cursor[0] += a.batch
        return order[start : start + a.batch]

    def step(track):
        index = next_index()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not a.no_amp):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        if track:
            tracker.update(logits, index)
        loss.backward()
        opt.step()
        last_logits[0] = logits.detach()

    results = {}
    budget_note = ""
    variants = [("without tracker", False), ("with tracker.update", True)]
    for label, track in variants:
        for _ in range(warmup):
            step(track)
        if cuda:
            torch.cuda.synchronize(device)
        timer = Timer(device)
        n = steps
        for k in range(steps):
            timer(lambda track=track: step(track))
            if a.budget_s is not None and k >= 2 and time.monotonic() - t_start > 0.6 * a.budget_s:
                n = k + 1
                budget_note = f" (timed steps cut to {n} by --budget-s {a.budget_s:g})"
                break
        results[label] = timer.seconds()[:n]
        print(f"{label}: median {statistics.median(results[label]) * 1e3:.2f} ms over {n} steps", flush=True)

    # The update alone on the last logits (bf16 under autocast), and one end_epoch.
    timer = Timer(device)
    logits = last_logits[0]
    for _ in range(steps):
        index = next_index()
        timer(lambda index=index: tracker.update(logits, index))
    update_alone = timer.seconds()
    timer = Timer(device)
    timer(tracker.end_epoch)
    end_epoch = timer.seconds()[0]

    t_without = statistics.median(results["without tracker"])
    t_with = statistics.median(results["with tracker.update"])
    t_update = statistics.median(update_alone)
    epoch_steps = -(-a.samples // a.batch)
    name = torch.cuda.get_device_name(device) if cuda else f"{os.cpu_count()}-core CPU"
    lines = [
        f"Device: {name}; torch {torch.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Model: {model_label}; batch {a.batch}, {a.size}x{a.size}, channels_last, "
        f"{'no autocast' if a.no_amp else 'bf16 autocast'}, SGD (momentum 0.9).",
        f"Tracker: N = {a.samples:,}, C = {a.classes}, storage {a.storage}, backend {tracker.backend}. "
        f"Median of {len(results['with tracker.update'])} timed steps after {warmup} warm-up steps"
        f" ({'CUDA events' if cuda else 'wall clock'}){budget_note}.",
        "",
        "| measured | median (ms) | min (ms) |",
        "|---|---:|---:|",
        f"| step without tracker | {t_without * 1e3:.2f} | {min(results['without tracker']) * 1e3:.2f} |",
        f"| step with tracker.update | {t_with * 1e3:.2f} | {min(results['with tracker.update']) * 1e3:.2f} |",
        f"| tracker.update alone (same logits shape) | {t_update * 1e3:.3f} | {min(update_alone) * 1e3:.3f} |",
        f"| end_epoch (once per epoch) | {end_epoch * 1e3:.2f} | |",
        "",
        f"Tracker's share of the step: {(t_with - t_without) / t_with:.2%} (difference of the medians); "
        f"update alone / step with it: {t_update / t_with:.2%}.",
        f"end_epoch against one epoch of {epoch_steps:,} steps of {t_with * 1e3:.1f} ms: "
        f"{end_epoch / (epoch_steps * t_with):.4%}.",
    ]
    if a.model == "small":
        lines.insert(0, "SMOKE TEST WITH A SMALL FALLBACK CNN, NOT RESNET-50.")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
