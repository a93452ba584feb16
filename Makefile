# Two commands do their own set-up on a fresh clone:
#   make sweep   the quickstart study (local Ray, offline digits data)
#   make test    ruff, mypy and the whole test suite (what CI runs)
# The everyday loop: make check (ruff, mypy, the tests that start no Ray or Docker).
# Dependencies: make lock (refresh constraints.txt), make test-latest (the newest of
# everything pyproject.toml allows, in its own venv). See docs/dependencies.md.
VENV ?= .venv
PY := $(VENV)/bin/python
# Every package but torch, pinned: compiled from pyproject.toml by `make lock`.
CONSTRAINTS ?= constraints.txt
# pip itself is pinned too: a new pip has changed how constraints apply before.
PIP ?= pip==26.3
UV ?= uv==0.13.9
# torch first and pinned: an open range pulls a multi-GB CUDA build. CPU-only machines
# can add TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
EXTRAS ?= test,nlp,cluster
ARGS ?=
LATEST ?= .venv-latest

.PHONY: sweep test check lint env lock test-latest clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(PIP)
	$(PY) -m pip install $(TORCH_INDEX) $(TORCH)
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

env: $(VENV)/.installed

sweep: $(VENV)/.installed
	$(PY) experiments/sweep.py $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m mypy

check: lint
	$(PY) -m pytest -q -m "not ray and not docker and not slow"

test: lint
	$(PY) -m pytest

# The lock resolves torch at the version pinned above (so its own dependencies are
# locked too), then leaves torch and torchvision out: TORCH installs them.
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(UV)
	printf '%s\n' $(TORCH) > $(VENV)/torch-pin.txt
	$(VENV)/bin/uv pip compile pyproject.toml $(addprefix --extra ,$(subst $(comma), ,$(EXTRAS))) \
	  -c $(VENV)/torch-pin.txt --no-emit-package torch --no-emit-package torchvision \
	  --python-version 3.11 --custom-compile-command "make lock" --upgrade -o $(CONSTRAINTS)

# Drift caught on purpose: no constraints, the newest of everything the ranges allow.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install $(TORCH_INDEX) $(TORCH)
	$(LATEST)/bin/python -m pip install -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/freeze.txt
	touch $(LATEST)/.installed
	$(MAKE) check VENV=$(LATEST) CONSTRAINTS=$(LATEST)/freeze.txt
	$(LATEST)/bin/python experiments/sweep.py --smoke --storage-path $(LATEST)/results

comma := ,

clean:
	rm -rf $(VENV) $(LATEST) *.egg-info .pytest_cache .ruff_cache
