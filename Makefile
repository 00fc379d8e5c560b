# The two set-up commands of the README. Each creates the project-local .venv and installs domainfm with
# every extra into it when missing (or when pyproject.toml / constraints.txt changed), then runs.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.domainfm-installed

.PHONY: quickstart test lint format clean

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

clean:
	rm -rf $(VENV) quickstart_report quickstart_report.partial .pytest_cache .ruff_cache dist build
