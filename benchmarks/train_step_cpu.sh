#!/usr/bin/env bash
# The tracker's share of a real CPU training step (benchmarks/bench_train_step.py), three settings
# in one table: the MNIST-1D demo's CNN at the demo's shape (with targets=, as the demo feeds it),
# and ResNet-18 (CIFAR variant) at 32x32, batch 128, N = 50,000, C = 10 and 100.
#   benchmarks/train_step_cpu.sh [OUT.md]     (about 2-3 minutes on 2 quiet cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/train_step_cpu_epyc_2core.md}
PY=${PYTHON:-python}
mkdir -p "$(dirname "$OUT")"
{
  echo "# Tracker's share of a CPU training step: 2-core AMD EPYC"
  echo
  echo "\`benchmarks/train_step_cpu.sh\`; load average (1/5/15 min) before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "fp32 (no autocast), SGD, random data; each variant's steps alternate with the other's."
} > "$OUT"
"$PY" benchmarks/bench_train_step.py --device cpu --model demo --threads 1 --no-amp --targets \
  --steps 100 --warmup 10 --out "$OUT" --append --title "MNIST-1D demo CNN, update with targets= (as the demo)"
"$PY" benchmarks/bench_train_step.py --device cpu --model demo --threads 1 --no-amp \
  --steps 100 --warmup 10 --out "$OUT" --append --title "MNIST-1D demo CNN, update without targets"
for C in 10 100; do
  "$PY" benchmarks/bench_train_step.py --device cpu --model resnet18-cifar --classes "$C" --no-amp \
    --steps 5 --warmup 1 --out "$OUT" --append --title "ResNet-18 (CIFAR variant), C = $C"
done
echo >> "$OUT"
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)." >> "$OUT"
