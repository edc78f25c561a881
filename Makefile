# The two commands of the README (`make demo`, `make test`) and what they stand on.
# Needs Python 3.11 (or 3.12, 3.13), Java 17 and Maven on PATH; everything else is installed here.
# Another Python: `make test PYTHON=python3.13` (3.11 to 3.13) builds and uses .venv-3.13/.
PYTHON ?= python3.11
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# .venv/ is Python 3.11's, the default one that README and CI use; another gets its own.
VENV   ?= $(if $(filter 3.11,$(PYVER)),.venv,.venv-$(PYVER))
BIN    := $(VENV)/bin

.PHONY: demo test lint bench kafka-up kafka-down clean venv-python

$(BIN)/gemeentebus: pyproject.toml constraints.txt | venv-python
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
	# the whole suite once more, on a broker secured as `kafka up --secure` makes it
	# (SASL_SSL, SCRAM, ACLs enforced)
	env -u KAFKA_BOOTSTRAP_SERVERS GEMEENTEBUS_TEST_SECURE_KAFKA=1 $(BIN)/pytest $(PYTEST_ARGS)

bench: $(BIN)/gemeentebus
	$(BIN)/gemeentebus bench

kafka-up: $(BIN)/gemeentebus
	$(BIN)/gemeentebus kafka up

kafka-down: $(BIN)/gemeentebus
	$(BIN)/gemeentebus kafka down

# A venv made by another Python than $(PYTHON) is never reused: stop and say so.
venv-python:
	@test -n "$(PYVER)" || { echo "$(PYTHON) not found: install it or pass PYTHON=" >&2; exit 1; }
	@if [ -e $(BIN)/python ]; then \
	  have=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	  if [ "$$have" != "$(PYVER)" ]; then \
	    echo "$(VENV) holds Python $${have:-(broken)}, not $(PYVER) ($(PYTHON)):" \
	      "remove it (rm -rf $(VENV)) or pass another VENV=" >&2; \
	    exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build dist
