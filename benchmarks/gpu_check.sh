#!/usr/bin/env bash
# One run on a lent GPU machine (no network): build the C++/CUDA extension, run the CUDA tests
# with compiled Triton kernels, benchmark the ops on cuda. Logs and the table go to $OUT if set
# (at most 8 files come back from there), else to benchmarks/results/.
#
#     bash benchmarks/gpu_check.sh     # at most ~10 minutes (the step limits below sum to 580 s)
#
# Each step has its own time limit and the script carries on past a failing step, so one
# failure still leaves the others' results. Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1  # tests/conftest.py defaults it to 1 (CPU tests)
failed=0
step() {  # step NAME SECONDS CMD...: runs CMD with a time limit, logs to $DEST/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$DEST/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0))s; tail of $DEST/$name.log:"
  tail -n 15 "$DEST/$name.log" | sed 's/^/   | /'
  [ $rc -eq 0 ] || failed=$((failed + 1))
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version 2>/dev/null | tail -n 1; } >"$DEST/env.txt" 2>&1
cat "$DEST/env.txt"
card=$(python -c "import torch; print(torch.cuda.get_device_name().replace('NVIDIA ', '').replace(' ', '_'))" 2>/dev/null || echo gpu)

step build 200 env FORCE_CUDA=1 MAX_JOBS="$(nproc)" pip install -e . --no-build-isolation --no-deps -v
# Every test whose id names cuda (device-parametrized tests; CPU-only ones skip or deselect).
step tests 150 python -m pytest -q --maxfail=5 -p no:cacheprovider tests -k cuda -rs
step bench 230 python benchmarks/bench_ops.py --device cuda --out "$DEST/ops_${card}.md"
echo "== $failed step(s) failed; results in $DEST"
exit "$failed"
