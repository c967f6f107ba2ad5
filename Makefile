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

.PHONY: setup setup-metaworld demo lint test test-slow clean

# A venv ($(1)) with the pinned torch first, then metarl with the extras $(2); $@ is its stamp.
define make_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet $(TORCH_PIP) "$(TORCH)"
	$(1)/bin/python -m pip install --quiet -e ".[$(2)]"
	touch $@
endef

EXTRAS := test,ray
MW_EXTRAS := test,metaworld,ray

$(STAMP): pyproject.toml
	$(call make_venv,$(VENV),$(EXTRAS))

setup: $(STAMP)

# Meta-World pins mujoco 3.3.0: its families are tested in a venv of their own, so that the main
# venv (and the results it trains) keeps the newest mujoco 3.3.x.
MW_VENV ?= .venv-metaworld
MW_BIN := $(MW_VENV)/bin
MW_STAMP := $(MW_VENV)/.metarl-installed

$(MW_STAMP): pyproject.toml
	$(call make_venv,$(MW_VENV),$(MW_EXTRAS))

setup-metaworld: $(MW_STAMP)

demo: setup
	$(BIN)/metarl train experiments/navigation2d_quick.yaml

lint: setup
	$(BIN)/ruff check .

# Lint first (a second), then the suite, then the Meta-World families in their venv; CI runs exactly this.
test: lint setup-metaworld
	$(BIN)/python -m pytest
	METARL_REQUIRE_METAWORLD=1 $(MW_BIN)/python -m pytest tests/test_metaworld.py

test-slow: setup setup-metaworld
	$(BIN)/python -m pytest -m slow
	METARL_REQUIRE_METAWORLD=1 $(MW_BIN)/python -m pytest -m slow tests/test_metaworld.py

clean:
	rm -rf $(VENV) $(MW_VENV) *.egg-info .pytest_cache
