# Every target sets up its own virtual environment first (.venv, rebuilt when
# pyproject.toml or this file changes), so `make train` and `make test` work on
# a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch lies on this machine's disk; an unpinned torch pulls a
# multi-GB CUDA build.
TORCH  := torch==2.13.0
# Upstream packages for the conversion and parity tests. --no-deps: vit-pytorch
# asks for torchvision, whose PyPI build does not load beside the CPU torch.
UPSTREAM := vit-pytorch==1.26.11 axial-attention==0.6.1

.PHONY: setup train test lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[torch,train,dev]'
	$(BIN)/python -m pip install -q --no-deps $(UPSTREAM)
	touch $@

train: $(STAMP)
	$(BIN)/python -m train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)
