# The README's commands: `make plan`, `make test` (and `make check`, the fast tier), `make venv` to deploy.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed
FAST := not (needs_root or real_tools or live or rehearsal)

.PHONY: venv plan check test lint bench rehearse clean

$(RUNTIME): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(STAMP): $(RUNTIME) requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(RUNTIME)  ## only what `pulumi up` runs the program with (Pulumi.yaml points at .venv): to deploy
	@echo "$(VENV) is ready for pulumi preview / pulumi up"

plan: $(STAMP)  ## offline plan of the example stack: resource tree, build/plan/<host>/..., manifest
	$(PY) -m offline plan --stack homelab --out build/plan

check: $(STAMP)  ## the fast tier, after every change (under a minute): tests that need only Python
	$(PY) -m pytest -m "$(FAST)" -n 2 -q

test: $(STAMP)  ## every test; what needs root or a real tool skips with the reason (REQUIRE_REAL_TOOLS=1: fails)
	@# Two workers, each test file on one of them; then the rehearsal on two workers, each file on
	@# one: the main deployment's events on one, the object store's outage and then the upgrades
	@# on the other.
	$(PY) -m pytest -m "not rehearsal" -n 2 --dist loadfile; first=$$?; \
	$(PY) -m pytest -m rehearsal -n 2 --dist loadfile; second=$$?; \
	[ $$first -eq 0 ] && [ $$second -eq 0 ]

lint: $(STAMP)  ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m mypy

rehearse: $(STAMP)  ## the stack onto booted Debian 12 systems on this machine (root; ARGS=--keep to inspect)
	$(PY) -m offline.rehearsal $(ARGS)

bench: $(STAMP)  ## plan time of the example stack and 3/10/30 Loki nodes, next to the bare SDK's floor
	$(PY) bench/plan_benchmark.py

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache
