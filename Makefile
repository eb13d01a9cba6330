# kadapt — the same targets by hand and in CI (.ci/run calls `make test`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
KADAPT := $(VENV)/bin/kadapt
DATA ?= data/default
DEBS := redis-server bart ismrmrd-tools mricron-data dicom3tools caddy

.PHONY: setup debs venv data demo test lint typecheck contracts unit bench clean

setup: debs venv

# Debian packages kadapt uses (redis-server for deployments and integration tests, bart as an
# independent classic recon, ismrmrd-tools for real MRD phantom files, mricron-data for anatomy,
# dicom3tools for the DICOM conformance check).
debs:
	@bash scripts/install-debs.sh $(DEBS)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build on this machine's disk; the project range admits it.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cpu,dev]"
	touch $@

data: setup
	@test -f $(DATA)/manifest.json || $(KADAPT) data build --out $(DATA)

demo: data
	$(KADAPT) demo --data $(DATA) --out kadapt-demo

lint: venv
	$(VENV)/bin/ruff check shared services clients tests
	$(VENV)/bin/ruff format --check shared services clients tests

typecheck: venv
	$(VENV)/bin/mypy

contracts: venv
	$(VENV)/bin/lint-imports

unit: venv
	$(VENV)/bin/pytest -q

test: setup lint typecheck contracts unit

bench: data
	$(KADAPT) bench ingest --quick --out bench-ingest.json
	$(KADAPT) bench recon --data $(DATA) $(addprefix --bundles ,$(wildcard models/modl/*)) --quick --out bench-recon.json

clean:
	rm -rf $(VENV) kadapt-demo .pytest_cache .mypy_cache .ruff_cache
