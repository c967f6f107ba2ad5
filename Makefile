# Two entry points: `make demo` (set up, then meta-train on 2D navigation) and `make test`.
# The pinned CPU build of torch is installed before anything else, so no dependency pulls a
# multi-GB CUDA build on a CPU machine. GPU users: see README ("Installing for a GPU").

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# Extra pip options for the torch install only, e.g. TORCH_PIP="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.metarl-installed

.PHONY: setup demo lint test test-slow clean

# The venv with the pinned torch first, then metarl with its test, Ray and Meta-World extras.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,ray,metaworld]"
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/metarl train experiments/navigation2d_quick.yaml

lint: setup
	$(BIN)/ruff check .

# Lint first (a second), then the suite, Meta-World's families included (never skipped here); CI runs exactly this.
test: lint
	METARL_REQUIRE_METAWORLD=1 $(BIN)/python -m pytest

test-slow: setup
	METARL_REQUIRE_METAWORLD=1 $(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
