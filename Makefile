# Two entry points: `make run` (the flow) and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= seed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test setup bench clean

setup: $(VENV)/.installed

# torch is pinned here to the build this project is tested with; pyproject.toml allows a range.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(BIN)/cifar-pipeline run --preset $(PRESET) $(ARGS)

test: setup
	bash tests/system_packages.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
