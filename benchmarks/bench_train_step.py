"""What the tracker costs a real training step: with and without it, same model, same batch.

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

CPU figures (defaults per model: batch, input, N and C of the setting it stands for):
    --model resnet18-cifar   ResNet-18, CIFAR variant (3x3 stem, no max-pool, BasicBlock [2,2,2,2])
                             defined here (torchvision is not required): batch 128, 32x32 random
                             images, N = 50,000; pass --classes 10 or 100
    --model demo             the MNIST-1D demo's 1D CNN (tdds_kernels.demo): batch 100, (1, 40)
                             random signals, N = 20,000, C = 10; --targets feeds targets= as the
                             demo does (baseline scores too)
    python benchmarks/bench_train_step.py --device cpu --model resnet18-cifar --classes 10 --no-amp
    python benchmarks/bench_train_step.py --device cpu --model demo --threads 1 --no-amp --targets
The variants alternate step by step (without, with, without, ...), so load from other processes
drifting during the run hits both alike.
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


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # projection when the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """The usual CIFAR ResNet-18: 3x3 stem at stride 1 (no max-pool), four stages of two blocks."""

    def __init__(self, num_classes):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


# Per model: (batch, input shape after the batch dim as a function of --size, N, C) defaults.
MODEL_DEFAULTS = {
    "resnet50": (256, lambda size: (3, size or 224, size or 224), IMAGENET_N, IMAGENET_C),
    "small": (256, lambda size: (3, size or 224, size or 224), IMAGENET_N, IMAGENET_C),
    "resnet18-cifar": (128, lambda size: (3, size or 32, size or 32), 50_000, 10),
    "demo": (100, lambda size: (1, size or 40), 20_000, 10),
}


def make_model(name, num_classes):
    if name == "demo":
        from tdds_kernels.demo.train import make_model as demo_model

        n_params = sum(p.numel() for p in demo_model(1, num_classes).parameters())
        return demo_model(1, num_classes), f"the MNIST-1D demo's 1D CNN (tdds_kernels.demo, {n_params:,} parameters)"
    if name == "resnet18-cifar":
        return ResNet18Cifar(num_classes), "ResNet-18 (CIFAR variant, defined in the script)"
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(
            weights=None, num_classes=num_classes
        ), f"torchvision {torchvision.__version__} ResNet-50 (random init)"
    return SmallCNN(num_classes), "SMALL FALLBACK CNN (not ResNet-50: torchvision absent or --model small)"


def pct(x):
    """A share with 3 significant digits: 0.0123% stays readable where .2% would print 0.00%."""
    return f"{x * 100:.3g}%"


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
    ap.add_argument("--model", choices=list(MODEL_DEFAULTS), default="resnet50")
    ap.add_argument("--batch", type=int, default=None, help="default per model (see above)")
    ap.add_argument("--size", type=int, default=None, help="image side / signal length (default per model)")
    ap.add_argument("--samples", type=int, default=None, help="tracker N (default per model)")
    ap.add_argument("--classes", type=int, default=None, help="C (default per model)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument(
        "--targets", action="store_true", help="update(logits, index, targets=y): baseline scores too, as the demo does"
    )
    ap.add_argument("--title", default=None, help="with --append: the heading of this run's section")
    ap.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    ap.add_argument("--storage", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--backend", default="auto", help="tracker backend")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 20 cuda, 3 cpu)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 cuda, 1 cpu)")
    ap.add_argument("--no-amp", action="store_true", help="no bf16 autocast")
    ap.add_argument("--budget-s", type=float, default=None, help="fewer timed steps if the run would pass this")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    a = ap.parse_args(argv)
    d_batch, d_shape, d_samples, d_classes = MODEL_DEFAULTS[a.model]
    a.batch = a.batch or d_batch
    a.samples = a.samples or d_samples
    a.classes = a.classes or d_classes
    in_shape = d_shape(a.size)
    if a.threads:
        torch.set_num_threads(a.threads)
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
    image = len(in_shape) == 3
    model = model.to(device)
    x = torch.randn(a.batch, *in_shape, device=device)
    if image:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
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
            tracker.update(logits, index, targets=y if a.targets else None)
        loss.backward()
        opt.step()
        last_logits[0] = logits.detach()

    budget_note = ""
    variants = [("without tracker", False), ("with tracker.update", True)]
    for _, track in variants:
        for _ in range(warmup):
            step(track)
    if cuda:
        torch.cuda.synchronize(device)
    timers = {label: Timer(device) for label, _ in variants}
    update_timer, end_timer = Timer(device), Timer(device)
    interrupted = ""
    try:  # a SIGINT (gpu_check's stage limit) keeps what was measured: the table is still written
        for k in range(steps):
            # Alternating: a load change during the run lands on both variants.
            for label, track in variants:
                timers[label](lambda track=track: step(track))
            if a.budget_s is not None and k >= 2 and time.monotonic() - t_start > 0.6 * a.budget_s:
                budget_note = f" (timed steps cut to {k + 1} by --budget-s {a.budget_s:g})"
                break
        # The update alone on the last logits (bf16 under autocast), and one end_epoch.
        logits = last_logits[0]
        for _ in range(max(steps, 50)):  # cheap next to a step: more repeats, a steadier median
            index = next_index()
            update_timer(lambda index=index: tracker.update(logits, index, targets=y if a.targets else None))
        end_timer(tracker.end_epoch)
    except KeyboardInterrupt:
        interrupted = " INTERRUPTED (SIGINT): only the steps measured before it"
    n = min(len(timers[label].seconds()) for label, _ in variants)
    if n == 0:
        print("bench_train_step: interrupted before any timed step; no table written")
        return 130
    results = {label: timers[label].seconds()[:n] for label, _ in variants}
    for label, _ in variants:
        print(f"{label}: median {statistics.median(results[label]) * 1e3:.2f} ms over {n} steps", flush=True)
    update_alone = update_timer.seconds() or [float("nan")]
    end_epoch = (end_timer.seconds() or [float("nan")])[0]
    budget_note += interrupted

    t_without = statistics.median(results["without tracker"])
    t_with = statistics.median(results["with tracker.update"])
    t_update = statistics.median(update_alone)
    epoch_steps = -(-a.samples // a.batch)
    spread = (max(results["without tracker"]) - min(results["without tracker"])) / t_without
    name = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"{os.cpu_count()}-core CPU, {torch.get_num_threads()} torch threads"
    )
    lines = [
        f"Device: {name}; torch {torch.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Model: {model_label}; batch {a.batch}, input {'x'.join(map(str, in_shape))}"
        f"{', channels_last' if image else ''}, "
        f"{'no autocast' if a.no_amp else 'bf16 autocast'}, SGD (momentum 0.9).",
        f"Tracker: N = {a.samples:,}, C = {a.classes}, storage {a.storage}, backend {tracker.backend}"
        f"{', update with targets= (baselines too)' if a.targets else ''}. "
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
        f"Tracker's share of the step: {pct((t_with - t_without) / t_with)} (difference of the medians; "
        f"the step without it spreads by {pct(spread)} of its median, (max - min) / median); "
        f"update alone / step with it: {pct(t_update / t_with)}.",
        f"end_epoch against one epoch of {epoch_steps:,} steps of {t_with * 1e3:.1f} ms: "
        f"{pct(end_epoch / (epoch_steps * t_with))}.",
    ]
    if a.model == "small":
        lines.insert(0, "SMOKE TEST WITH A SMALL FALLBACK CNN, NOT RESNET-50.")
    if not cuda:
        try:
            with open("/proc/loadavg") as fh:
                lines.insert(1, f"Load average (1/5/15 min) at the end: {' '.join(fh.read().split()[:3])}.")
        except OSError:
            pass
    if a.title:
        lines[:0] = [f"## {a.title}", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "a" if a.append else "w") as fh:
            fh.write(("\n" if a.append and fh.tell() else "") + text)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
