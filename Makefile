# Two commands do their own set-up on a fresh clone:
#   make sweep   the quickstart study (local Ray, offline digits data)
#   make test    ruff, mypy and the whole test suite (what CI runs)
# The everyday loop: make check (ruff, mypy, the tests that start no Ray or Docker).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: an open range pulls a multi-GB CUDA build. CPU-only machines
# can add TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
ARGS ?=

.PHONY: sweep test check lint env clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_INDEX) $(TORCH)
	$(PY) -m pip install -e ".[test,nlp,cluster]"
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

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
