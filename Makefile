# alpaca-operator: every set-up step lives here, so a fresh machine needs only `make demo`
# or `make test`. External caches (Go builds, Kubernetes binaries, models) live outside the
# repo under $(ALPACA_CACHE).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SRC := $(wildcard operator serving training weights dev tests benchmarks)
export ALPACA_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/alpaca-operator

.DEFAULT_GOAL := help
.PHONY: help venv k8s-bins crds lint test test-fast demo clean golden serving-deps

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python -e '.[dev,weights]' -e ./dev
	touch $@

venv: $(VENV)/.installed ## create .venv with the operator and the dev tools

k8s-bins: ## kube-apiserver, etcd, kubectl (+ controller-manager, scheduler): KUBEBUILDER_ASSETS, cache, or a Go build
	@scripts/k8s-bins.sh controller-manager scheduler

crds: venv ## regenerate crds/, the chart's crds/ and ClusterRole from the API models and RBAC rules
	$(VENV)/bin/alpaca-operator crds --out crds --out charts/alpaca-operator/crds --chart charts/alpaca-operator

lint: venv ## ruff, formatting, import layers
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/lint-imports

test-fast: venv ## unit tests only (no control plane)
	$(PY) -m pytest tests/unit

serving-deps: venv ## Ray Serve + vLLM (the CPU build here; requirement list generated from its wheel)
	$(PY) scripts/serving_deps.py

test: venv k8s-bins serving-deps lint ## everything: unit, real apiserver, operator e2e, real serving (what CI runs)
	ALPACA_K8S_BINS="$$(scripts/k8s-bins.sh | tail -n 1)" $(PY) -m pytest tests --basetemp=.pytest-tmp -n 2 --dist loadgroup

demo: venv k8s-bins serving-deps ## control plane + operator + local runtime: SmolLM2 served, a chat answer printed; Ctrl-C stops it
	$(PY) -m alpaca_dev.demo --bin-dir "$$(scripts/k8s-bins.sh | tail -n 1)" --repo . \
		--thirdparty-crds "$$(scripts/thirdparty.sh crds | tail -n 1)" $(if $(DEMO_ONCE),--once)

clean: ## remove the venv and build leftovers (the binary cache outside the repo stays)
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

-include mk/*.mk

golden: venv ## regenerate the renderers' golden files (review the diff)
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/unit/render
