# Two entry points: `make demo` (train + sample on synthetic data) and `make test`.
# Both set everything up on a fresh machine: venv, pinned deps, extension build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

.PHONY: test demo bench build clean

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The editable install compiles csrc/ (C++ always; CUDA when nvcc exists, MMATTN_CUDA=0 to skip).
$(VENV)/.built: $(VENV)/.deps setup.py $(shell find csrc -type f)
	@mkdir -p build
	@echo "building mmattn._C (log: build/build.log)"
	@$(PY) -m pip install --no-build-isolation -v -e . > build/build.log 2>&1 || (tail -40 build/build.log; exit 1)
	@grep -E "mmattn: |nvcc .* -c " build/build.log | sed -E 's/(nvcc) .* -c ([^ ]+) .*/\1 \2/' || true
	$(PY) -c "import mmattn, mmattn._C as C; print('mmattn._C built, CUDA kernels:', C.with_cuda)"
	touch $@

build: $(VENV)/.built

test: $(VENV)/.built
	$(PY) -m pytest -q

demo: $(VENV)/.built
	$(PY) -m mmdiffusion demo --out demo_out

bench: $(VENV)/.built
	$(PY) -m benchmarks.kernels

clean:
	rm -rf build *.egg-info mmattn/_C*.so $(VENV)
