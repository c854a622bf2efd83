#!/usr/bin/env bash
# Check tdds_kernels against one torch release, in isolation from whatever torch you run:
# a fresh virtual environment outside the repository gets that torch and the test tools, a copy
# of this checkout (tracked and untracked, not ignored, files) builds the C++ extension against
# it, and the CPU conformance, extension and determinism tests run for the `cpu` and `reference`
# backends (Triton excluded: its kernels are checked on the CI torch).
#
# Usage: scripts/check_torch_version.sh TORCH_VERSION        e.g. scripts/check_torch_version.sh 2.14.1
#
# pip must be able to reach that torch wheel: the network (the public index gives a CUDA build on
# Linux; for the CPU build set PIP_INDEX_URL=https://download.pytorch.org/whl/cpu) or a local
# wheel directory (PIP_FIND_LINKS=/path, plus PIP_NO_INDEX=1 to stay offline). A CUDA build is several
# GB on disk. A CUDA torch with nvcc present builds the CUDA kernels too (TORCH_CUDA_ARCH_LIST,
# default 9.0 here, keeps that to one architecture; FORCE_CPU=1 builds the CPU kernels only).
#
# Environment: PYTHON (default python3), WORK (default a new directory under ${TMPDIR:-/tmp}),
# KEEP=1 keeps WORK (the venv and the copy) afterwards; by default it is deleted.
# Exit status: that of the tests (0 = all passed); the versions used and the pytest summary are
# printed at the end.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 TORCH_VERSION (e.g. 2.14.1)" >&2
    exit 2
fi
TORCH_VERSION=$1
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/tdds-torch-$TORCH_VERSION.XXXXXX")}
WORK=$(realpath -m "$WORK")
case "$WORK" in
"$REPO" | "$REPO"/*)
    echo "WORK=$WORK is inside the repository; the venv and copy must live outside it" >&2
    exit 2
    ;;
esac
VENV=$WORK/venv
SRC=$WORK/src

cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "check_torch_version: kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

echo "== venv $VENV, torch==$TORCH_VERSION"
"$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
# Test and build tools only after torch, so they cannot pull a different torch.
"$PY" -m pip install -q --disable-pip-version-check numpy pytest hypothesis tqdm "setuptools>=64" wheel ninja

echo "== copy of $REPO -> $SRC (no build outputs, no compiled extension)"
mkdir -p "$SRC"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard) |
    tar -C "$REPO" --null --ignore-failed-read -T - -cf - | tar -C "$SRC" -xf -
test -f "$SRC/setup.py" || {
    echo "copy failed: no setup.py in $SRC" >&2
    exit 1
}

echo "== build tdds_kernels._C"
cd "$SRC"
# One architecture keeps a CUDA build to minutes; without a GPU nothing runs on it anyway.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
# torch guesses CUDA_HOME as the directory above the first nvcc on PATH; where that nvcc is a
# wrapper script (e.g. /usr/local/bin/nvcc) the guess has no lib64 and the link fails to find
# cudart, so ask nvcc where it really lives.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
    : >"$WORK/probe.cu"
    here=$(nvcc -dryrun -c "$WORK/probe.cu" -o "$WORK/probe.o" 2>&1 | sed -n 's|^#\$ _HERE_=\(.*\)/bin$|\1|p' | head -1)
    if [ -n "$here" ]; then export CUDA_HOME=$here; fi
fi
echo "CUDA_HOME=${CUDA_HOME:-unset} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST FORCE_CPU=${FORCE_CPU:-0}"
if ! "$PY" setup.py build_ext --inplace >"$WORK/build.log" 2>&1; then
    tail -n 30 "$WORK/build.log" >&2
    echo "build failed (log above; KEEP=1 keeps $WORK/build.log)" >&2
    exit 1
fi
grep "tdds_kernels:" "$WORK/build.log" || true
"$PY" -c "import tdds_kernels._C" || {
    echo "build failed: tdds_kernels._C does not import" >&2
    exit 1
}

echo "== tests (cpu and reference backends)"
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/ops/test_conformance_*.py tests/ops/test_extension_cpu.py \
    tests/ops/test_determinism.py -k "not triton" || status=$?

echo "== versions"
"$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
import tdds_kernels as tk

def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {v('triton')}, numpy {v('numpy')}, pytest {v('pytest')}")
print("backends on CPU:", ", ".join(tk.available_backends("cpu")))
EOF
echo "check_torch_version: torch $TORCH_VERSION -> pytest exit status $status"
exit $status
