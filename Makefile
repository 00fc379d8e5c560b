# The two set-up commands of the README. Each creates the project-local .venv and installs domainfm with
# every extra into it when missing (or when pyproject.toml / constraints.txt changed), then runs.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.domainfm-installed

.PHONY: quickstart test lint format clean bench-peers-env

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "domainfm needs Python >= 3.11; set PYTHON=python3.11")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/domainfm quickstart --out quickstart_report

test: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# `domainfm bench tiling --peers`: tiatoolbox pins torch<2.13 and lazyslide pins pandas<3 (and the two pin
# disjoint dask ranges), so neither can join domainfm's environment; each gets its own, which the benchmark
# finds under .venv-peers/<peer> and runs in a child process (docs/benchmarks.md).
PEERS_VENVS := .venv-peers
bench-peers-env:
	test -x $(PEERS_VENVS)/tiatoolbox/bin/python || $(PYTHON) -m venv $(PEERS_VENVS)/tiatoolbox
	$(PEERS_VENVS)/tiatoolbox/bin/python -m pip install --quiet "tiatoolbox==2.1.3" "torch==2.12.1"
	test -x $(PEERS_VENVS)/lazyslide/bin/python || $(PYTHON) -m venv $(PEERS_VENVS)/lazyslide
	$(PEERS_VENVS)/lazyslide/bin/python -m pip install --quiet -c constraints.txt "lazyslide==0.13.0"

clean:
	rm -rf $(VENV) quickstart_report quickstart_report.partial .pytest_cache .ruff_cache dist build
