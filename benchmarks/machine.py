"""The machine a benchmark ran on, named the same way in every table: the CPU model, its core
count and its widest vector ISA (a number from an AVX2-only CPU and one from an AVX-512 CPU are
not comparable), or the GPU."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest variant of the C++ CPU kernels this CPU runs (what the extension picks, from
    cpuid), or, without the extension, the widest torch itself would use."""
    try:
        import tdds_kernels._C as ext

        return ext.cpu_variant_supported().upper().replace("AVX512", "AVX-512")
    except ImportError:
        return torch.backends.cpu.get_cpu_capability().upper().replace("AVX512", "AVX-512")


def describe(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} CPUs, {cpu_isa()}"
