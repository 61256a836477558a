# Two commands for a new user: `make demo` and `make test`. Each bootstraps .venv itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
ARGS   ?=
# pytest workers for `make test`: one per core, at most 4 (most tests wait on brokers, processes and browsers)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: venv demo lint test e2e bench k8s-check camera-demo clean help

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "edgefleet needs Python >= 3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)  ## create or update .venv with everything the project needs

demo: venv  ## run broker, fleet API and three agents; roll out a real model (ARGS=--once to exit after the table)
	@bash scripts/ensure-system.sh mosquitto
	$(PY) -m demo $(ARGS)

lint: venv  ## ruff over everything, mypy over the five packages, the import rules (seconds; run by `test`)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/vulture --min-confidence 80 fleet_protocol fleet_api edge_agent model_tools fleet_cli
	@# the import rules: plain pytest, no plug-ins or fixtures (they cost more than the test)
	PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(PY) -m pytest -q -p no:cacheprovider -p pytest_timeout --noconftest tests/test_architecture.py

test: venv lint  ## run the whole test suite after `lint` (and the offline k3s manifest checks)
	@bash scripts/ensure-system.sh mosquitto chromium
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)
	@$(MAKE) --no-print-directory k8s-check

k8s-check:  ## render, validate and lint the k3s manifests, offline
	bash scripts/k8s-check.sh

camera-demo: venv  ## the camera pipeline on a webcam, or on a generated video; prints the URL to open
	$(PY) -m demo.camera $(ARGS)

bench: venv  ## run the benchmarks (prints tables)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:  ## remove the virtualenv and demo state
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
