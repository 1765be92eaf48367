# QuantIAN: `make testnet` runs a local network, `make test` runs the whole test suite.
# Both create .venv and install the project into it first (again only when pyproject.toml changes).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= test
TESTNET_ARGS ?=
PYTEST_ARGS ?=

# The first of these that is Python >= 3.11 (override with `make PYTHON=/path/to/python3.12`).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { command -v $$p; break; }; done)

.PHONY: help venv testnet test soak bench bench-nab clean

help:
	@echo "make testnet   install into .venv, run a local network in the foreground (Ctrl-C stops it)"
	@echo "make test      install into .venv, run the whole test suite"
	@echo "make soak      longer fault-injection runs (tests/faults with 100 whole-node kills, chain crash test; QUANTIAN_SOAK=1)"
	@echo "make bench     pipeline benchmark (bench/pipeline.py)"
	@echo "make bench-nab anomaly detector on the NAB corpus (bench/nab.py)"
	@echo "make clean     stop a running testnet, remove .venv, .testnet and caches"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: QuantIAN needs Python >= 3.11; none of python3.13, python3.12, python3.11, python3 on PATH is." >&2; \
		echo "       Install one, or point make at it: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)" >&2; \
		exit 1; fi
	@if [ -x "$(PY)" ] && ! "$(PY)" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
		echo "$(VENV) holds Python < 3.11: recreating it"; rm -rf "$(VENV)"; fi
	@if [ ! -x "$(PY)" ]; then echo "creating $(VENV) with $(PYTHON)"; \
		"$(PYTHON)" -m venv "$(VENV)" || { rm -rf "$(VENV)"; \
		echo "error: $(PYTHON) could not create a venv (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }; fi
	"$(PY)" -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch "$(STAMP)"

testnet: $(STAMP)
	"$(VENV)/bin/quantian-testnet" run $(TESTNET_ARGS)

# pytest exits 5 when it ran no test: that is a failure here, said plainly (make would only say "Error 5").
test: $(STAMP)
	@rc=0; "$(VENV)/bin/pytest" $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no tests (exit 5): failing" >&2; fi; \
	exit $$rc

soak: $(STAMP)
	QUANTIAN_SOAK=1 "$(VENV)/bin/pytest" -ra tests/faults tests/test_chain_crash.py $(PYTEST_ARGS)

bench: $(STAMP)
	@if [ -f bench/pipeline.py ]; then "$(PY)" bench/pipeline.py; \
	else echo "bench/pipeline.py does not exist yet: no pipeline benchmark to run"; fi

bench-nab: $(STAMP)
	@if [ -f bench/nab.py ]; then "$(PY)" bench/nab.py; \
	else echo "bench/nab.py does not exist yet: no NAB benchmark to run"; fi

clean:
	-@if [ -x "$(VENV)/bin/quantian-testnet" ] && [ -f .testnet/testnet.json ]; then "$(VENV)/bin/quantian-testnet" down --dir .testnet; fi
	rm -rf "$(VENV)" .testnet .pytest_cache .hypothesis build dist *.egg-info bench/out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
