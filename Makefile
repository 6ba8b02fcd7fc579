# Each target creates .venv when missing and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: here it comes from the local CPU wheel; elsewhere pip fetches it.
TORCH := torch==2.13.0

.PHONY: demo test venv dev reproduce-uap reproduce-sparse reproduce-smoothing clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/pip install -q -e '.[dev,asr]'
	touch $@

venv: $(VENV)/.core
dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(BIN)/audioadv demo --out runs/demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .cache
