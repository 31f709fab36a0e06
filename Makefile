# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= cross-encoder/nli-MiniLM2-L6-H768
DEMO_MODEL ?= .zsc/demo-model
PORT ?= 8000
STAMP := $(VENV)/.zsc-installed

.PHONY: install run demo test test-fast lint browser postgres soak bench bench-peers bench-gpu clean

# The whole development set: the server (torch), ONNX Runtime, the prefilter, tests, benchmarks.
# torch is pinned: 2.13.0 is the CPU build this project is tested with (a plain `torch` would pull
# a multi-GB CUDA build on machines without a GPU). A client-only install is just `pip install .`
# (README, "Install"). pip installs uv, and uv everything else: resolved, unpacked and compiled
# in parallel, in about half pip's time. uv does not read pip's settings, so it is given pip's
# find-links (where a machine keeps its local torch wheel: PIP_FIND_LINKS or pip's config) and
# the system's certificate store, and writes bytecode as pip does: without it every Ray worker
# compiles torch, transformers and Ray from source at each start (the suite took twice the CPU
# where PYTHONDONTWRITEBYTECODE is set).
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==0.13.8
	$(BIN)/uv pip install -q --system-certs --compile-bytecode --python $(BIN)/python \
		$(foreach link,$(FIND_LINKS),--find-links $(link)) \
		-e ".[serve,onnx,prefilter,tracing,test,bench]" torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/serve run --name zsc serve_app.app:build_app model=$(MODEL)

demo: install
	@test -f $(DEMO_MODEL)/config.json || $(BIN)/zsc make-test-model $(DEMO_MODEL)
	@echo "*** make demo: serving a TINY RANDOM test model: its scores are random and mean nothing. ***"
	$(BIN)/serve run --name zsc serve_app.app:build_app model=$(DEMO_MODEL)

# Debian's Chromium for the browser test (Playwright drives it; it never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# Debian's PostgreSQL server binaries for the job store tests: each test session starts its own
# throwaway server from them (serve_app/devtools/postgres.py), so no cluster is created here.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

# Workers of `make test` (pytest-xdist), each given whole modules, all on one Ray instance
# (tests/conftest.py): most real-Ray tests wait on Ray (replicas starting, leases expiring,
# buckets refilling), not on cores.
TEST_WORKERS ?= 2

# Every test but the soak (`make soak`, about 10 minutes of steady load), and the lint gate beside
# them: lint's seconds of one core overlap the tests' start instead of delaying it. Either
# failing fails the target; lint's output is printed after the tests'.
test: install browser postgres
	@$(MAKE) --no-print-directory lint > $(VENV)/lint.log 2>&1 & lint=$$!; \
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests; \
	tests=$$?; wait $$lint; linted=$$?; cat $(VENV)/lint.log; \
	test $$linted -eq 0 || echo "make test: the lint gate failed (above)"; \
	test $$linted -eq 0 -a $$tests -eq 0

# ruff (lint and format) and mypy (strict on the modules without Ray; see pyproject.toml).
lint: install
	$(BIN)/ruff check serve_app tests bench
	$(BIN)/ruff format --check serve_app tests bench
	$(BIN)/mypy

test-fast: install postgres
	$(BIN)/python -m pytest -q -m "not slow and not ray and not browser and not fuzz" -n $(TEST_WORKERS) --dist loadfile tests

soak: install postgres
	$(BIN)/python -m pytest -q -m slow tests

bench: install
	$(BIN)/zsc bench

# zsc against infinity-emb (installed by the script into its own venv, .zsc/peers-venv, on first
# use), sentence-transformers and the transformers pipeline, side by side: bench/results/peers.json.
bench-peers: install
	$(BIN)/python -m bench.bench_peers

# On a machine with an NVIDIA GPU. It installs nothing: the venv above holds the CPU build of
# torch, so it runs an interpreter that already has a CUDA build of torch and the project's
# dependencies (GPU_PYTHON=...). `.venv/bin/python -m bench.bench_gpu --smoke` checks it on CPU.
GPU_PYTHON ?= python3
bench-gpu:
	$(GPU_PYTHON) -m bench.bench_gpu

clean:
	rm -rf $(VENV) .zsc .pytest_cache
