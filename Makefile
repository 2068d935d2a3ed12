# vdmpp: two commands on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_VERSION := 26.0
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export MPLBACKEND ?= Agg
# CI sets CI=true: the fast hypothesis profile and the non-slow tests.
PYTEST_ARGS ?= -n 2 -m "not slow"

.PHONY: setup demo test test-all lint docs bench reproduce fashion-mnist clean

setup: $(STAMP)

# Re-install only when the dependency spec or the lock file changed.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e . --group tests --group dev --group docs
	@bash scripts/install_system_data.sh --check || true
	@touch $(STAMP)

# Optional system data (changes the system, so only when asked): Debian's Fashion-MNIST for --data fashion_mnist.
fashion-mnist:
	bash scripts/install_system_data.sh --install

# A fresh run each time (training refuses a workdir that already holds checkpoints, unless --resume).
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/python experiments/train_gaussian.py --workdir runs/demo --data digits --demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	@mkdir -p runs/bench
	@for b in benchmarks/*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

reproduce: $(STAMP)
	@for e in experiments/reproduce/[!_]*.py; do echo "== $$e" >&2; $(BIN)/python $$e || exit 1; done

clean:
	rm -rf $(VENV) .cache site runs
