# The two commands of the README: `make serve` and `make test`. Both build .venv from the pins.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: serve test lint system-deps proto seed bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Server only: no torch.
$(VENV)/.base: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[server]'
	touch $@

# Everything: the export stage (torch CPU wheel) and the dev tools.
$(VENV)/.dev: $(VENV)/.base
	@echo "Installing the export and dev extras (torch CPU wheel) ..."
	$(PIP) -e '.[server,export,dev,tracing]'
	touch $@

serve: $(VENV)/.base
	$(BIN)/lstm-serve --repository models

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	scripts/typecheck_tree.sh
	$(BIN)/mypy

# nginx and promtool, for the load-balancer and Prometheus-config tests (they skip, saying
# why, where these cannot be installed: not root, or no apt-get).
system-deps:
	@if command -v nginx >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing nginx and prometheus (promtool) from Debian ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends nginx prometheus >/dev/null; \
	else echo "note: nginx/promtool missing and not installable here; their tests will skip"; fi

test: lint system-deps
	$(BIN)/pytest

# The side-by-side benchmark (about 12 minutes): writes BENCHMARKS.md and benchmarks/*.
# MLServer goes into .venv-mlserver, a venv of its own.
$(VENV)/.bench: $(VENV)/.dev
	$(PIP) -e '.[server,export,dev,tracing,bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run.py

# Regenerates the Python code for proto/ (never edit it by hand).
proto: $(VENV)/.dev
	$(BIN)/python scripts/gen_proto.py

# Re-exports the shipped seed model (input 2, layers 64 32, seed 0).
seed: $(VENV)/.dev
	$(BIN)/lstm-export --input-size 2 --layers 64 32 --seed 0 --name seed --version 1 \
		--repository models --force

clean:
	rm -rf $(VENV) .venv-mlserver .pytest_cache .mypy_cache .ruff_cache *.egg-info
