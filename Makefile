# The README's two commands: `make plan` and `make test`. Each sets up .venv first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: plan test lint bench rehearse clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

plan: $(STAMP)  ## offline plan of the example stack: resource tree, build/plan/<host>/..., manifest
	$(PY) -m offline plan --stack homelab --out build/plan

test: $(STAMP)  ## the whole test suite (REQUIRE_REAL_TOOLS=1 turns a missing tool into a failure)
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

bench: $(STAMP)  ## plan time for the example stack and 3/10/30 Loki nodes, next to the import floor
	$(PY) bench/plan_benchmark.py

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache
