# The README's two commands: `make demo` (install, then run the main job) and `make test`
# (the Python suite, then the C++ kernels' ctest under ASan/UBSan).
# torch is pinned to the CPU wheel on disk here; an open range would pull a multi-GB CUDA build.
PY ?= python3
PIP = $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install demo test bench

install:
	$(PIP) torch==2.13.0
	$(PIP) "triton==3.9.0" ninja
	$(PIP) -e ".[demo,test,lightning]" --no-build-isolation

demo: install
	tdds-kernels demo --out demo_out

test: install
	$(PY) -m pytest -q
	bash scripts/ci_ctest.sh

bench: install
	$(PY) benchmarks/bench_offline.py
	$(PY) benchmarks/bench_ops.py --device cpu
