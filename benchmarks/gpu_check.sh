#!/usr/bin/env bash
# The whole GPU verification in one command (one NVIDIA GPU, no network needed):
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh            # ends within 8 minutes
#     bash benchmarks/gpu_check.sh --list                    # the stages and their budgets
#     bash benchmarks/gpu_check.sh --only build,ext_tests    # a subset, in the usual order
#
# Stages, in order, each under its own time limit (the budgets sum to 480 s); a stage that fails
# or runs out of time is reported and the next one still runs:
#   env           nvidia-smi, torch / triton / nvcc / compute-sanitizer versions
#   triton_tests  the CUDA tests that need no extension, with compiled (not interpreted) Triton
#   build         the C++/CUDA extension in place (FORCE_CUDA=1, this card's arch only)
#   ext_tests     the extension's CUDA tests (a missing build fails them here, never skips)
#   sanitize      compute-sanitizer memcheck and racecheck on a short extension run
#   bench_ops     benchmarks/bench_ops.py --device cuda (table: ops_<card>.md), then
#                 benchmarks/bench_targets.py (targets= overhead: targets_<card>.md)
#   train_step    benchmarks/bench_train_step.py (table: train_step_<card>.md)
#
# Results: RESULTS = $OUT if set, else benchmarks/results/gpu_check_<card>/. When a stage ends,
# its log and a one-line status go to STAGES (NN_<stage>.log, NN_<stage>.status), the status
# line is appended to RESULTS/summary_<card>.txt, and with $OUT set STAGES (a temporary folder)
# is packed again into RESULTS/gpu_check_<card>.tar.gz: a lent machine returns only a few files
# from $OUT, so the logs travel as one archive next to the summary and the two tables.
# Exit status: the number of failed stages; 77 if there is no usable GPU (nothing run).
#
# Testing hooks (tests/test_gpu_check.py runs this on CPU): GPU_CHECK_FAKE_GPU=1 skips the GPU
# detection and GPU_CHECK_CMD_<stage>='...' replaces a stage's command (announced in every
# status line as "TEST MODE" and "injected", so such a run can never pass for a GPU result);
# GPU_CHECK_BUDGET_<stage>=S shortens a budget; GPU_CHECK_NVIDIA_SMI names the nvidia-smi to use.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python

STAGES_ORDER=(env triton_tests build ext_tests sanitize bench_ops train_step)
declare -A BUDGET=([env]=20 [triton_tests]=85 [build]=90 [ext_tests]=55 [sanitize]=70
                   [bench_ops]=100 [train_step]=60)
total=0
for s in "${STAGES_ORDER[@]}"; do
  v="GPU_CHECK_BUDGET_$s"  # a shorter budget (tests); never more than the 480 s in all
  BUDGET[$s]=${!v:-${BUDGET[$s]}}
  total=$((total + BUDGET[$s]))
done
if [ "$total" -gt 480 ] || [ "$(printf '%s\n' "${BUDGET[@]}" | sort -n | head -n 1)" -lt 8 ]; then
  echo "gpu_check: stage budgets must be >= 8 s each and sum to <= 480 s (got $total s)" >&2; exit 64
fi

only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --list) for s in "${STAGES_ORDER[@]}"; do echo "$s ${BUDGET[$s]}s"; done
            echo "total ${total}s"; exit 0 ;;
    --only) only=",${2:-},"; shift ;;
    --only=*) only=",${1#--only=},"; shift; continue ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (expected --list, --only STAGE[,STAGE])" >&2; exit 64 ;;
  esac
  shift
done

# ------------------------------------------------------------------ is there a GPU at all?
test_mode=""
if [ "${GPU_CHECK_FAKE_GPU:-0}" = 1 ]; then
  test_mode=" TEST MODE (GPU_CHECK_FAKE_GPU=1: no GPU was detected or used)"
  card=${GPU_CHECK_CARD:-testmode}
else
  smi=${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}  # tests name a missing one to take this path on any machine
  if ! command -v "$smi" >/dev/null 2>&1 || ! gpu=$("$smi" --query-gpu=name --format=csv,noheader 2>/dev/null) \
      || [ -z "$gpu" ]; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or failing); nothing was run" >&2
    exit 77
  fi
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: nvidia-smi sees '$gpu' but torch.cuda.is_available() is False; nothing was run" >&2
    exit 77
  fi
  card=$(echo "$gpu" | head -n 1 | sed -e 's/^NVIDIA //' -e 's/[^A-Za-z0-9.-]/_/g')
fi

RESULTS=${OUT:-benchmarks/results/gpu_check_$card}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
if [ -n "${OUT:-}" ]; then
  if [ -n "${GPU_CHECK_STAGES_DIR:-}" ]; then
    STAGES=$GPU_CHECK_STAGES_DIR
  else
    STAGES=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
    trap 'rm -rf "$STAGES"' EXIT  # its contents are in the archive by then
  fi
  ARCHIVE=$RESULTS/gpu_check_$card.tar.gz
else
  STAGES=${GPU_CHECK_STAGES_DIR:-$RESULTS/stages}
  ARCHIVE=""
fi
mkdir -p "$STAGES"
SUMMARY=$RESULTS/summary_$card.txt
: >"$SUMMARY"

export ROOT PY RESULTS card PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0  # tests/conftest.py would leave it unset on a GPU machine; be explicit

# ------------------------------------------------------------------ the stages' commands
run_pytest() {  # 4 workers where pytest-xdist is there: Triton compiles dominate, in parallel
  local par=()
  "$PY" -c "import xdist" 2>/dev/null && par=(-n 4)
  local log rc
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device, so the CUDA tests would only skip: not run"; return 1
  fi
  log=$(mktemp)
  # tee -i: on the budget's SIGINT, tee stays to pass on the summary pytest prints as it stops.
  "$PY" -m pytest -v -rfEs -p no:cacheprovider "${par[@]}" "$@" 2>&1 | tee -i "$log"
  rc=${PIPESTATUS[0]}
  # Every selected test skipped (no GPU seen, say) is not a pass.
  if [ "$rc" -eq 0 ] && ! tail -n 3 "$log" | grep -qE '[0-9]+ passed'; then
    echo "gpu_check: no test passed (all skipped or deselected)"; rc=1
  fi
  rm -f "$log"
  return "$rc"
}
stage_env() {
  local rc=0
  nvidia-smi || rc=1
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print('device', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())" || rc=1
  "$PY" -c "import torchvision; print('torchvision', torchvision.__version__)" 2>&1 | tail -n 1
  nvcc --version | tail -n 2
  compute-sanitizer --version 2>&1 | head -n 3
  ncu --version 2>&1 | tail -n 1
  echo "cpus $(nproc)"; git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null
  return $rc
}
stage_triton_tests() {
  # No extension is built yet: its tests skip here (backend unavailable) and run in ext_tests.
  run_pytest tests/ops/test_conformance_*.py tests/ops/test_schema.py tests/ops/test_determinism.py \
    tests/core/test_compile.py tests/ops/test_cuda_runtime.py tests/distributed/test_sync_free.py -k cuda
}
stage_build() {
  local arch
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return 1
  echo "TORCH_CUDA_ARCH_LIST=$arch"
  rm -f tdds_kernels/_C*.so
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) "$PY" setup.py build_ext --inplace \
    && "$PY" -c "import torch, tdds_kernels._C; assert torch._C._dispatch_has_kernel_for_dispatch_key('tdds::update_ext', 'CUDA'); print('extension with CUDA kernels: ok')"
}
stage_ext_tests() {
  TDDS_REQUIRE_EXT=1 run_pytest tests/ops/test_extension_cuda.py tests/ops/test_cuda_runtime.py \
    tests/ops/test_conformance_*.py tests/ops/test_schema.py tests/ops/test_determinism.py -k "cuda and not triton"
}
stage_sanitize() {
  local rc=0
  # --report-api-errors no: torch's runtime probes make API calls that fail on purpose (event
  # queries not ready yet, say); what this stage looks for is the kernels' memory errors and races.
  for tool in memcheck racecheck; do
    echo "---- compute-sanitizer --tool $tool"
    timeout --kill-after=3 $(((BUDGET_S - 14) / 2)) compute-sanitizer --tool "$tool" --error-exitcode 9 --report-api-errors no \
      "$PY" benchmarks/sanitize_run.py || rc=1
  done
  return $rc
}
stage_bench_ops() {
  "$PY" benchmarks/bench_ops.py --device cuda --budget-s $((BUDGET_S - 40)) --out "$RESULTS/ops_$card.md" || return
  # what targets= adds per backend (the baselines' row stats in the kernel pass, and their fold)
  "$PY" benchmarks/bench_targets.py --device cuda --calls 20 --out "$RESULTS/targets_$card.md"
}
stage_train_step() {
  "$PY" benchmarks/bench_train_step.py --device cuda --budget-s $((BUDGET_S - 15)) \
    --out "$RESULTS/train_step_$card.md"
}
export -f run_pytest stage_env stage_triton_tests stage_build stage_ext_tests stage_sanitize stage_bench_ops stage_train_step

echo "gpu_check on $card${test_mode}: results in $RESULTS, stage logs in $STAGES"
echo "budgets (s): $(for s in "${STAGES_ORDER[@]}"; do printf '%s=%s ' "$s" "${BUDGET[$s]}"; done)total=$total"

failed=0
n=0
for s in "${STAGES_ORDER[@]}"; do
  n=$((n + 1))
  tag=$(printf '%02d_%s' "$n" "$s")
  if [ -n "$only" ] && [[ "$only" != *",$s,"* ]]; then
    continue
  fi
  budget=${BUDGET[$s]}
  override_var="GPU_CHECK_CMD_$s"
  if [ -n "${!override_var:-}" ]; then
    cmd=${!override_var}; how="injected: $cmd"; injected=" (injected command)"
  else
    cmd="set -o pipefail; stage_$s"; how="stage_$s"; injected=""
  fi
  echo "== $tag: budget ${budget}s ($how)"
  t0=$SECONDS
  # SIGINT first (pytest then prints what ran so far), SIGKILL 5 s later: a stage ends 2 s
  # inside its budget, which leaves 14 s of the 480 for the GPU detection and the archives.
  # timeout signals the stage's whole process group.
  BUDGET_S=$budget timeout --signal=INT --kill-after=5 $((budget - 7)) bash -c "$cmd" \
    >"$STAGES/$tag.log" 2>&1 </dev/null
  rc=$?
  secs=$((SECONDS - t0))
  case $rc in
    0) result=ok ;;
    124|130|137) result="TIMEOUT"; failed=$((failed + 1)) ;;
    *) result="FAILED"; failed=$((failed + 1)) ;;
  esac
  line="$s rc=$rc seconds=$secs budget=$budget result=$result${injected}${test_mode}"
  echo "$line" >"$STAGES/$tag.status"
  echo "$line" >>"$SUMMARY"
  echo "   $line"
  tail -n 12 "$STAGES/$tag.log" | sed 's/^/   | /'
  if [ -n "$ARCHIVE" ]; then
    tar -czf "$ARCHIVE.tmp" -C "$STAGES" . && mv "$ARCHIVE.tmp" "$ARCHIVE"
  fi
done
echo "== $failed stage(s) failed${test_mode}; summary: $SUMMARY${ARCHIVE:+; logs: $ARCHIVE}"
exit "$failed"
