# Quick start: `make demo`, then `make test`. Works on CPU-only and CUDA machines.
PYTHON ?= python3
VENV   ?= .venv
# The pinned torch resolves to a small CPU build where a local wheel exists (our dev/CI machines)
# and to the standard CUDA build from PyPI elsewhere. Override with e.g. TORCH='torch --index-url ...'.
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/sceneprobe demo

test: install  # faulthandler: a crash, even at interpreter exit after the tests, prints where it happened
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs/demo
