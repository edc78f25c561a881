# The two commands of the README (`make demo`, `make test`) and what they stand on.
# Needs Python 3.11, Java 17 and Maven on PATH; everything else is installed here.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench kafka-up kafka-down clean

$(BIN)/gemeentebus: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	@touch $@

demo: $(BIN)/gemeentebus
	$(BIN)/gemeentebus demo

lint: $(BIN)/gemeentebus
	$(BIN)/ruff check streams connectors tests
	$(BIN)/ruff format --check streams connectors tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/gemeentebus schemas check

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(BIN)/gemeentebus
	$(BIN)/gemeentebus bench

kafka-up: $(BIN)/gemeentebus
	$(BIN)/gemeentebus kafka up

kafka-down: $(BIN)/gemeentebus
	$(BIN)/gemeentebus kafka down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
