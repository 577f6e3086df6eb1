# Two commands do all set-up on a fresh machine:
#   make run    the bot on the embedded default (local backend, SQLite, no cloud account)
#   make test   the whole test suite (SQLite and a throwaway PostgreSQL cluster)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run serve shell demo test lint bench clean

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -e .
	touch $@

# With Slack credentials in the environment the bot serves Slack; without, it opens the
# console adapter, where the same bot runs with no Slack at all.
run: $(BIN)/.installed
	@if [ -n "$$SLACK_SIGNING_SECRET" ]; then $(BIN)/nbenv serve; else $(BIN)/nbenv shell; fi

serve: $(BIN)/.installed
	$(BIN)/nbenv serve

shell: $(BIN)/.installed
	$(BIN)/nbenv shell

demo: $(BIN)/.installed
	$(BIN)/nbenv demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
