# The README's two commands: `make demo` (install, then run the main job) and `make test`
# (the Python suite, then the C++ kernels' ctest under ASan/UBSan). Run them inside a virtual
# environment (python3 -m venv .venv && . .venv/bin/activate), or pass PY=/path/to/python.
#
# torch: a torch that is already installed is used as it is (a CUDA build included) and never
# replaced. Only when none is found is TORCH_SPEC installed, the version the tests ran with.
# From the public index that is a CUDA build; for a CPU-only one, install it first:
#     pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
PY ?= python3
PIP ?= $(PY) -m pip install --disable-pip-version-check
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.9.0
TORCH_CONSTRAINT ?= build/torch-constraint.txt

.PHONY: install demo test bench lint

install:
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "make install: using the installed torch $$($(PY) -c 'import torch; print(torch.__version__)') (left as it is)"; \
	else \
	  echo "make install: no torch found; installing $(TORCH_SPEC)"; \
	  $(PIP) $(TORCH_SPEC) || exit 1; \
	fi
# Triton is optional (the tests run its kernels under TRITON_INTERPRET=1); CUDA builds of torch
# bring their own, which is kept. Without a wheel for this platform the Triton tests skip.
	@if $(PY) -c "import triton" 2>/dev/null; then \
	  echo "make install: using the installed triton"; \
	else \
	  echo "make install: installing $(TRITON_SPEC) (optional)"; \
	  $(PIP) -q $(TRITON_SPEC) || echo "make install: no $(TRITON_SPEC) for this platform; Triton tests will skip"; \
	fi
# --no-build-isolation builds the extension against the torch above (with isolation pip would
# fetch another torch to build with), so the build tools must be in this environment.
	$(PIP) -q "setuptools>=64" wheel ninja
# The constraint holds torch at the version found or installed above: resolving the extras
# must not swap it for another build.
	@mkdir -p $(dir $(TORCH_CONSTRAINT)) && $(PY) -c 'import torch; print("torch==" + torch.__version__)' > $(TORCH_CONSTRAINT)
	@echo "make install: building the C++ extension (tdds_kernels._C) and installing the package;"
	@echo "              the compile takes about 2 minutes on 2 CPU cores (pip prints 'still running...')"
	$(PIP) -e ".[demo,test,lightning,hf]" --no-build-isolation -c $(TORCH_CONSTRAINT)
	@echo "make install: done; backends on CPU: $$($(PY) -c 'import tdds_kernels as tk; print(", ".join(tk.available_backends("cpu")))' 2>/dev/null)"

demo: install
	$(PY) -m tdds_kernels demo --out demo_out

# VIRTUAL_ENV points CMake's Python (which locates torch's CMake files) at PY's environment.
test: install lint
	$(PY) -m pytest -q
	VIRTUAL_ENV="$$($(PY) -c 'import sys; print(sys.prefix)')" bash scripts/ci_ctest.sh

bench: install
	$(PY) benchmarks/bench_offline.py
	$(PY) benchmarks/bench_ops.py --device cpu

# Style, checked by `make test` (and so by CI): ruff for Python, clang-format for csrc/. The
# clang-format binary comes from the PyPI wheel in the test extra, beside PY.
CLANG_FORMAT ?= $(shell $(PY) -c 'import os, sys; print(os.path.join(os.path.dirname(sys.executable), "clang-format"))')
lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(CLANG_FORMAT) --dry-run --Werror $$(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu')
