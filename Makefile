# The two commands: `make run` (the bot) and `make test` (the suite).
# Both create or reuse .venv and install what they need; a fresh clone needs nothing else.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint migrate chat bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	@touch $(STAMP)

run: $(STAMP)  ## run the bot: embedded Postgres + Redis and the console chat when nothing is configured
	$(BIN)/bot run

chat: $(STAMP)  ## chat with the bot on this terminal
	$(BIN)/bot chat

test: $(STAMP)  ## the whole test suite against real Postgres and Redis
	$(BIN)/pytest

lint: $(STAMP)  ## ruff, mypy, and the layers of DESIGN.md (import-linter, in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

migrate: $(STAMP)  ## apply pending migrations
	$(BIN)/bot migrate

bench: $(STAMP)  ## measure the hot path against a hand-written baseline; BENCH_ARGS="--users 50 ..."
	$(BIN)/bot bench $(BENCH_ARGS)

clean:  ## remove the virtualenv (the data under DATA_DIR is kept)
	rm -rf $(VENV)
