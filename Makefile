# Each target sets itself up on a fresh machine: a venv in .venv, the CPU build of torch
# first (pip install torch==2.13.0 takes the wheel on this machine's disk; a plain `torch`
# would pull a multi-GB CUDA build), then the package with --no-build-isolation so the C++
# extension builds against that torch.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.luser_fast-installed
PYTEST_ARGS ?=

.PHONY: all setup demo test bench gpu-check clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py Makefile $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' 2>/dev/null)
	$(PIP) install -q --upgrade "pip>=23" "setuptools>=64" wheel ninja
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e ".[test,triton]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/luser-fast demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest tests -q -ra $(PYTEST_ARGS)

# the peers timed against (pinning torch keeps pip from swapping in a CUDA build); the CPU
# suites run twice, the first time into bench/results/repeat, so that the report shows
# whether the ratios of two runs agree within the noise each reports
bench: $(STAMP)
	$(PIP) install -q finufft torchkbnufft torchdeq astra-toolbox torch==2.13.0
	$(VENV)/bin/luser-fast bench --suite ops solver train --results bench/results/repeat --no-report
	$(VENV)/bin/luser-fast bench

# On a CUDA machine: CuPy for the local CUDA major (kept if one works; else the gpu extra's,
# from a wheel on the machine), the GPU tests, the GPU benchmarks (within a 9-minute budget),
# bench/results/gpu_<gpu>.json and BENCHMARKS.md (luser_fast.profile.bench.run_gpu_check).
# Without CUDA it prints what it would run and exits 0, installing and running nothing.
# It sets up no venv: GPU_PYTHON is the venv's Python if there is one, else python3; when
# that torch has no CUDA the check reruns itself with a Python on PATH whose torch has.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

gpu-check:
	$(GPU_PYTHON) -m luser_fast.cli bench --suite gpu

clean:
	rm -rf build *.egg-info .pytest_cache out
