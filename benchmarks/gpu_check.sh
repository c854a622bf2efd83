#!/usr/bin/env bash
# The whole GPU verification in one command (one NVIDIA GPU, no network needed):
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh            # ends within 8 minutes
#     bash benchmarks/gpu_check.sh --list                    # the stages and their budgets
#     bash benchmarks/gpu_check.sh --only build,ext_tests    # a subset, in the usual order
#
# Stages, in order, each under its own time limit; a stage that fails or runs out of time is
# reported and the next one still runs. Budgets (seconds; 480 in all, 8 minutes):
#   env           10  nvidia-smi, torch / triton / nvcc / compute-sanitizer versions
#   triton_tests  80  the CUDA tests that need no extension, with compiled (not interpreted)
#                     Triton: the triton and reference backends on CUDA, runtime, capture, compile
#   build         90  the C++/CUDA extension in place (FORCE_CUDA=1, this card's arch only)
#   ext_tests     45  only what the build adds: the cuda-backend cases of the conformance,
#                     schema and determinism suites, and the extension/runtime/capture tests
#                     (a missing build fails them here, never skips)
#   sanitize      70  compute-sanitizer memcheck on a short run of the extension's kernels and of
#                     the Triton kernels (auto's first choice); racecheck on the Triton kernels
#                     (their reductions go through shared memory) and on the extension's only if
#                     it uses shared memory (its top-K kernel does; the full-row kernels use warp
#                     shuffles only)
#   bench_ops    125  benchmarks/bench_ops.py --device cuda, headline shapes first (B = 8192,
#                     C = 1000, fp32 and bf16 storage, against the eager and compiled reference),
#                     then the sort alone, then the matrix (table: ops_<card>.md); then
#                     benchmarks/bench_targets.py (targets= overhead: targets_<card>.md),
#                     benchmarks/bench_topk.py (prev_topk against full rows: topk_<card>.md)
#   train_step    60  benchmarks/bench_train_step.py, ResNet-50 bf16 (train_step_<card>.md)
# Every benchmark rewrites its table after each row it measures, so a stage cut by its budget
# keeps what it measured. A stage is sent SIGINT 7 s before its budget ends and SIGKILL 5 s
# later; then whatever is left in its process group is killed, so nothing of it (a
# compute-sanitizer under its own time limit, say) runs on into the next stage.
#
# Results: RESULTS = $OUT if set, else benchmarks/results/gpu_check_<card>/. When a stage ends,
# its log and a one-line status go to STAGES (NN_<stage>.log, NN_<stage>.status), the status
# line is appended to RESULTS/summary_<card>.txt, and with $OUT set STAGES (a temporary folder)
# is packed again into RESULTS/gpu_check_<card>.tar.gz: a lent machine returns only a few files
# from $OUT, so the logs travel as one archive next to the summary and the tables.
# Exit status: the number of failed stages; 77 if there is no usable GPU (nothing run).
#
# Testing hooks (tests/test_gpu_check.py runs this on CPU): GPU_CHECK_FAKE_GPU=1 skips the GPU
# detection and GPU_CHECK_CMD_<stage>='...' replaces a stage's command (announced in every
# status line as "TEST MODE" and "injected", so such a run can never pass for a GPU result);
# GPU_CHECK_BUDGET_<stage>=S shortens a budget; GPU_CHECK_NVIDIA_SMI and GPU_CHECK_SANITIZER
# name the nvidia-smi and compute-sanitizer to use; PYTHON the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python

STAGES_ORDER=(env triton_tests build ext_tests sanitize bench_ops train_step)
declare -A BUDGET=([env]=10 [triton_tests]=80 [build]=90 [ext_tests]=45 [sanitize]=70
                   [bench_ops]=125 [train_step]=60)
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
SANITIZER=${GPU_CHECK_SANITIZER:-compute-sanitizer}
export SANITIZER
run_pytest() {  # parallel where pytest-xdist is there: Triton compiles dominate, on the CPUs
  local par=()
  local workers=$(( $(nproc) < 8 ? $(nproc) : 8 ))
  "$PY" -c "import xdist" 2>/dev/null && par=(-n "$workers")
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
  "$PY" -c "import xdist; print('pytest-xdist', xdist.__version__)" 2>&1 | tail -n 1
  nvcc --version | tail -n 2
  "$SANITIZER" --version 2>&1 | head -n 3
  echo "cpus $(nproc)"; git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null
  return $rc
}
stage_triton_tests() {
  # No extension is built yet: its tests skip here (backend unavailable) and run in ext_tests.
  run_pytest tests/ops/test_conformance_*.py tests/ops/test_schema.py tests/ops/test_determinism.py \
    tests/core/test_compile.py tests/ops/test_cuda_runtime.py tests/core/test_capture.py \
    tests/ops/test_cuda_large_offsets.py tests/distributed/test_sync_free.py -k cuda
}
stage_build() {
  local arch
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return 1
  echo "TORCH_CUDA_ARCH_LIST=$arch"
  rm -f tdds_kernels/_C*.so
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) "$PY" setup.py build_ext --inplace \
    && "$PY" -c "import torch, tdds_kernels._C; assert torch._C._dispatch_has_kernel_for_dispatch_key('tdds::update_ext', 'CUDA'); print('extension with CUDA kernels: ok')"
}
# The ext_tests selection: the cases whose backend is the extension's CUDA kernels (ids
# "cuda-cuda", or "[cuda]" where the backend is the only parameter) and the modules about the
# extension, the runtime and capture without their triton cases. The reference-on-CUDA cases
# already ran in triton_tests. tests/test_gpu_check.py checks what this collects on CPU.
EXT_TEST_FILES=(tests/ops/test_conformance_update.py tests/ops/test_conformance_epoch_step.py
  tests/ops/test_conformance_topk.py tests/ops/test_conformance_targets.py tests/ops/test_conformance_trackers.py
  tests/ops/test_schema.py tests/ops/test_determinism.py
  tests/ops/test_extension_cuda.py tests/ops/test_cuda_runtime.py tests/core/test_capture.py
  tests/ops/test_cuda_large_offsets.py)
EXT_TEST_K="cuda-cuda or cuda] or ((test_extension_cuda or test_cuda_runtime or test_capture or test_cuda_large_offsets) and not triton and not reference)"
stage_ext_tests() {
  local files
  read -r -a files <<<"$EXT_TEST_FILES_STR"
  TDDS_REQUIRE_EXT=1 run_pytest "${files[@]}" -k "$EXT_TEST_K"
}
sanitize_one() {  # TOOL BACKEND SECONDS: one compute-sanitizer run of benchmarks/sanitize_run.py
  local tool=$1 backend=$2 secs=$3
  echo "---- $SANITIZER --tool $tool, backend $backend (at most ${secs}s)"
  # --foreground: this timeout stays in the stage's process group, so the stage's own limit
  # (which signals that group) reaches compute-sanitizer and its target too. sanitize_run.py
  # stops starting cases at its deadline, before this limit cuts it.
  # --report-api-errors no: torch's runtime probes make API calls that fail on purpose (event
  # queries not ready yet, say); what this stage looks for is the kernels' memory errors and races.
  timeout --foreground --kill-after=3 "$secs" "$SANITIZER" --tool "$tool" --error-exitcode 9 \
    --report-api-errors no "$PY" benchmarks/sanitize_run.py --backend "$backend" --deadline-s $((secs * 2 / 3))
}
stage_sanitize() {
  # memcheck x2, racecheck of the Triton kernels, and of the extension's when they share memory
  local rc=0 runs=3 share
  grep -q __shared__ "$ROOT"/csrc/cuda/*.cu && runs=4
  share=$(((BUDGET_S - 10) / runs))
  [ "$share" -lt 3 ] && share=3
  sanitize_one memcheck cuda "$share" || rc=1
  sanitize_one memcheck triton "$share" || rc=1
  sanitize_one racecheck triton "$share" || rc=1
  if grep -q __shared__ "$ROOT"/csrc/cuda/*.cu; then
    sanitize_one racecheck cuda "$share" || rc=1
  else
    echo "---- racecheck of the extension's kernels: not run, they use no shared memory (warp shuffles only)"
  fi
  return $rc
}
stage_bench_ops() {
  # bench_ops.py times the headline shapes first and rewrites its table after every row.
  local rc=0
  "$PY" benchmarks/bench_ops.py --device cuda --budget-s $((BUDGET_S - 60)) --out "$RESULTS/ops_$card.md" || rc=1
  # what targets= adds per backend (the baselines' row stats in the kernel pass, and their fold)
  "$PY" benchmarks/bench_targets.py --device cuda --calls 20 --budget-s 15 --out "$RESULTS/targets_$card.md" || rc=1
  # prev_topk: the triton and cuda top-K kernels against full rows at C = 21,841, B = 1,024
  "$PY" benchmarks/bench_topk.py --part speed --device cuda --budget-s 15 --json "$RESULTS/topk_$card.json" \
    --report --out "$RESULTS/topk_$card.md" || rc=1
  return $rc
}
stage_train_step() {
  "$PY" benchmarks/bench_train_step.py --device cuda --budget-s $((BUDGET_S - 15)) \
    --out "$RESULTS/train_step_$card.md"
}
export -f run_pytest stage_env stage_triton_tests stage_build stage_ext_tests sanitize_one stage_sanitize \
  stage_bench_ops stage_train_step
export EXT_TEST_K
export EXT_TEST_FILES_STR="${EXT_TEST_FILES[*]}"  # arrays do not export; stage_ext_tests re-reads it

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
  # SIGINT first (pytest then prints what ran so far, benchmarks keep their tables), SIGKILL
  # 5 s later: a stage ends 2 s inside its budget, which leaves 14 s of the 480 for the GPU
  # detection and the archives. timeout signals the stage's whole process group; the stage
  # notes that group's id first, and whatever is still in it afterwards is killed.
  pgid_file="$STAGES/.$tag.pgid"
  BUDGET_S=$budget timeout --signal=INT --kill-after=5 $((budget - 7)) \
    bash -c "cut -d' ' -f5 /proc/\$\$/stat >'$pgid_file' 2>/dev/null; $cmd" >"$STAGES/$tag.log" 2>&1 </dev/null
  rc=$?
  pgid=$(cat "$pgid_file" 2>/dev/null); rm -f "$pgid_file"
  if [ -n "$pgid" ] && [ "$pgid" != "$(cut -d' ' -f5 /proc/$$/stat)" ]; then
    kill -KILL -- "-$pgid" 2>/dev/null
  fi
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
