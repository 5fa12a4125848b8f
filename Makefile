# langchain-gradsum: developer and CI entry points.
#
#   make test        unit tests, notebooks, PostgreSQL tests, then integration tests
#                    against the embedded local LLM (and LangGraph's own server)
#   make local-llm   install the local extra, build llama-server (once: ~7 min on 2 cores),
#                    assemble + verify the model
#   make serve       run the local LLM server in the foreground (Ctrl-C to stop)
#   make studio      the graph under LangGraph's dev server (`langgraph dev`, graphs/)
#   make demo        run the demo against the local LLM
#
# Everything installs into .venv; stamp files in .venv make repeat runs fast.
# Note: pip here may print harmless "Location ... is ignored" warnings.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.stamp
LOCAL  := $(PY) -m langchain_gradsum.local_llm

.DEFAULT_GOAL := help
.PHONY: help venv install install-local local-llm serve test test-unit test-integration \
        test-postgres postgresql demo lint clean docs

help:
	@echo "targets: venv install install-local local-llm serve test test-unit"
	@echo "         test-postgres test-integration demo studio lint docs clean"

venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP)-install: pyproject.toml | $(PY)
	$(PIP) install -e '.[test]'
	@touch $@

$(STAMP)-install-local: pyproject.toml | $(PY)
	$(PIP) install -e '.[local,test]'
	@touch $@ $(STAMP)-install

install: $(STAMP)-install

install-local: $(STAMP)-install-local

# `build` compiles llama.cpp's llama-server from the pinned llama-cpp-python sdist into
# ~/.cache/langchain-gradsum/bin (needs cmake and g++); a finished build is reused.
local-llm: install-local
	$(LOCAL) build
	$(LOCAL) assemble
	@$(LOCAL) status

serve: local-llm
	$(LOCAL) serve

test-unit: install chromium
	$(PY) -m pytest tests/unit_tests -q

# Headless chromium for the report's browser test (tests/unit_tests/test_report_browser.py);
# if it cannot be installed, that test is skipped with the reason.
.PHONY: chromium
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  echo "installing chromium (apt-get) for the report's browser test"; \
	  ( $$SUDO apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ) || \
	  echo "could not install chromium: the report's browser test will be skipped"; \
	fi

# The server extra (langgraph-cli[inmem], langgraph-sdk): the integration tests include
# one that runs the graph under `langgraph dev` (tests/integration_tests/test_langgraph_server.py).
$(STAMP)-install-server: pyproject.toml | $(PY)
	$(PIP) install -e '.[server,test]'
	@touch $@

.PHONY: install-server
install-server: $(STAMP)-install-server

test-integration: local-llm $(STAMP)-install-server
	$(LOCAL) run -- $(PY) -m pytest tests/integration_tests -m integration -q

# The notebooks (notebooks/), executed top to bottom in a fresh kernel with the scripted
# fake model (GRADSUM_NOTEBOOK_MODEL=fake), into a temp dir: committed outputs stay as they are.
.PHONY: test-notebooks
$(STAMP)-install-notebooks: pyproject.toml | $(PY)
	$(PIP) install -e '.[notebooks,test]'
	@touch $@

test-notebooks: install $(STAMP)-install-notebooks
	$(PY) -m pytest tests/notebooks -q

# checkpoint="postgresql://...": a throwaway PostgreSQL cluster (tests/postgres_tests/
# conftest.py starts and stops it) and the postgres extra. Debian's postgresql package is
# installed if its server programs are missing; if that fails, the tests are skipped
# with the reason.
$(STAMP)-install-postgres: pyproject.toml | $(PY)
	$(PIP) install -e '.[postgres,test]'
	@touch $@

postgresql:
	@if ! command -v initdb >/dev/null 2>&1 && \
	    ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  echo "installing postgresql (apt-get) for the PostgreSQL checkpoint tests"; \
	  ( $$SUDO apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql ) || \
	  echo "could not install postgresql: the PostgreSQL tests will be skipped"; \
	fi

test-postgres: install $(STAMP)-install-postgres postgresql
	$(PY) -m pytest tests/postgres_tests -m postgres -q

test: test-unit test-notebooks test-postgres test-integration

demo: local-llm
	$(LOCAL) run -- $(PY) -m langchain_gradsum.demo

# LangGraph's dev server (and Studio) on the graph, with the embedded model as "local".
.PHONY: studio
studio: local-llm $(STAMP)-install-server
	cd graphs && $(abspath $(PY)) -m langchain_gradsum.local_llm run -- \
	  $(abspath $(VENV))/bin/langgraph dev --no-browser --host 127.0.0.1 --port 2024


# Regenerate what is made from the code: the README's knob table (from GradSumContext)
# and the graph's drawings (graphs/draw.py). Unit tests fail when either is stale.
.PHONY: docs
docs: install
	$(PY) -c "from langchain_gradsum._knobs import main; main(['README.md'])"
	$(PY) graphs/draw.py

$(STAMP)-install-lint: pyproject.toml | $(PY)
	$(PIP) install -e '.[lint,test]'
	@touch $@

lint: $(STAMP)-install-lint
	$(PY) -m ruff check .
	$(PY) -m mypy langchain_gradsum

# Keeps .venv, and the llama-server build and the assembled model in
# ~/.cache/langchain-gradsum (rebuilding takes minutes); `rm -rf .venv` for a full reset.
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print | xargs rm -rf
	rm -f $(STAMP)-*

# --- benchmarks (benchmarks/README.md) ---------------------------------------------------
#   make bench-efficiency   framework overhead with a fixed-latency fake model (~1 min)
#   make bench              GRAD-SUM vs DSPy on the local LLM (BENCH_ARGS to choose tasks)
#   make bench-serving      llama-server vs llama-cpp-python's server (~25 min; the first
#                           run also builds llama-cpp-python, ~6 min, for the old server)
BENCH_ARGS ?= --tasks svamp
SERVING_ARGS ?= --server both

.PHONY: bench bench-efficiency bench-serving install-bench

$(STAMP)-install-bench: pyproject.toml | $(PY)
	$(PIP) install -e '.[local,bench,test]'
	@touch $@ $(STAMP)-install $(STAMP)-install-local

install-bench: $(STAMP)-install-bench

bench-efficiency: install
	$(PY) benchmarks/efficiency.py

bench: install-bench
	$(LOCAL) build
	$(LOCAL) assemble
	$(LOCAL) run -- $(PY) benchmarks/run.py $(BENCH_ARGS)

# The old server, for the comparison only: never part of the runtime install.
$(STAMP)-install-old-server: | $(PY)
	$(PIP) install 'llama-cpp-python[server]==0.3.36'
	@touch $@

bench-serving: local-llm $(STAMP)-install-old-server
	$(PY) benchmarks/serving.py $(SERVING_ARGS)
