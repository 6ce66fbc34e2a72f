# The two commands of the README: `make serve` and `make test`. Both build .venv from the pins.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: serve test test-fast lint system-deps image-test images push proto docs seed bench clean

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
	$(BIN)/mypy
	$(BIN)/pyright

# nginx, prometheus/promtool and redis-server, for the load-balancer, Prometheus-config,
# autoscaling-metric and shared-sequence-store tests; podman, runc, catatonit (the pods' pause process) and debootstrap, for the image and
# `podman kube play` tests (they skip, saying why, where these cannot be installed: not root,
# or no apt-get).
SYSTEM_TOOLS := nginx promtool prometheus redis-server podman runc catatonit debootstrap
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing nginx, prometheus, redis-server, podman, runc, catatonit, debootstrap from Debian ..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends nginx prometheus redis-server podman runc catatonit \
			debootstrap >/dev/null; \
	else echo "note:$$missing missing and not installable here; the tests needing them skip"; fi

# The real images (server and export targets) built with podman and run as docker-compose
# runs them: tests/system/deploy/test_images.py, which `make test` also runs.
image-test: $(VENV)/.dev system-deps
	$(BIN)/pytest -v -s tests/system/deploy/test_images.py

# The images an operator deploys, tagged with the package version (the tag the Kubernetes
# overlays use), built with podman or docker, whichever is present; `REGISTRY=host/path make
# push` tags and pushes them there (docs/deployment.md).
# IMAGES picks targets (e.g. IMAGES="server export": no multi-GB CUDA wheels); ENGINE_FLAGS
# goes to each build (e.g. "--runtime runc" where crun cannot run).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' service/lstm_serving/version.py)
ENGINE := $(shell command -v podman || command -v docker)
IMAGES ?= server server-gpu export
ENGINE_FLAGS ?=
# podman builds OCI images by default, which drop the Dockerfile's HEALTHCHECK
FORMAT := $(if $(findstring podman,$(ENGINE)),--format docker)
images:
	@test -n "$(ENGINE)" || { echo "neither podman nor docker is installed"; exit 1; }
	for target in $(IMAGES); do \
		$(ENGINE) build $(FORMAT) $(ENGINE_FLAGS) --target $$target -t lstm-serving/$$target:$(VERSION) . \
			|| exit 1; \
	done

push: images
	@test -n "$(REGISTRY)" || { echo "set REGISTRY, e.g. REGISTRY=registry.example.com/team make push"; exit 1; }
	for target in $(IMAGES); do \
		$(ENGINE) tag lstm-serving/$$target:$(VERSION) $(REGISTRY)/lstm-serving/$$target:$(VERSION) \
		&& $(ENGINE) push $(REGISTRY)/lstm-serving/$$target:$(VERSION) || exit 1; \
	done

test: lint system-deps
	$(BIN)/pytest

# The edit loop: unit tests only (tests/unit, not marked slow), under a minute.
test-fast: $(VENV)/.dev
	$(BIN)/pytest tests/unit -m "not slow" -q

# The side-by-side benchmark (about 20 minutes): lstm-serve against the bare echo with h2load
# as the client, a worker-thread batch beside a busy event loop, then every server with
# lstm-client load; results in benchmarks/results/, and BENCHMARKS.md (the three runs' tables,
# then benchmarks/NOTES.md).
# MLServer goes into .venv-mlserver, a venv of its own.
$(VENV)/.bench: $(VENV)/.dev
	$(PIP) -e '.[server,export,dev,tracing,bench]'
	touch $@

bench: $(VENV)/.bench
	@command -v h2load >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; } || true
	@if command -v h2load >/dev/null; then $(BIN)/python -m benchmarks.h2load_bench; \
	else echo "note: h2load (Debian's nghttp2-client) not installable here: its table skipped"; fi
	$(BIN)/python -m benchmarks.probes.gil_handoff
	@if command -v redis-server >/dev/null; then $(BIN)/python -m benchmarks.shared_sequences; \
	else echo "note: redis-server (make system-deps) not installed: the shared-store table skipped"; fi
	$(BIN)/python -m benchmarks.run

# Regenerates the Python code for proto/ (never edit it by hand).
proto: $(VENV)/.dev
	$(BIN)/python scripts/gen_proto.py

# Regenerates docs/configuration.md (the flag table) from Settings; a test fails when stale.
docs: $(VENV)/.dev
	$(BIN)/python scripts/gen_config_docs.py

# Re-exports the shipped seed model (input 2, layers 64 32, seed 0).
seed: $(VENV)/.dev
	$(BIN)/lstm-export --input-size 2 --layers 64 32 --seed 0 --name seed --version 1 \
		--repository models --force

clean:
	rm -rf $(VENV) .venv-mlserver .pytest_cache .mypy_cache .ruff_cache build
