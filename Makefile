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
.PHONY: help venv k8s-bins node-bins thirdparty images crds lint test test-fast demo clean golden serving-deps

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip uv
	mkdir -p $(VENV)/tmp  # uv's build locks go here, not in /tmp
	TMPDIR=$(abspath $(VENV))/tmp $(VENV)/bin/uv pip install -q --python $(VENV)/bin/python -e '.[operator,dev,weights]' -e ./dev
	touch $@

venv: $(VENV)/.installed ## create .venv with the operator and the dev tools

k8s-bins: ## kube-apiserver, etcd, kubectl (+ controller-manager, scheduler): KUBEBUILDER_ASSETS, cache, or a Go build
	@scripts/k8s-bins.sh controller-manager scheduler

node-bins: ## real-node tier: Debian packages (root), then kubelet, kube-proxy, containerd, runc, CoreDNS, pause (cache or a Go build)
	@scripts/host-packages.sh
	@scripts/node-bins.sh

crds: venv ## regenerate crds/, the chart's crds/, ClusterRoles and RBAC.md from the API models and RBAC rules
	$(VENV)/bin/alpaca-operator crds --out crds --out charts/alpaca-operator/crds --chart charts/alpaca-operator

lint: venv ## ruff, formatting, import layers
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/lint-imports

test-fast: venv ## unit tests only (no control plane)
	$(PY) -m pytest tests/unit

serving-deps: venv ## Ray Serve + vLLM (the CPU build here; requirement list generated from its wheel)
	$(PY) scripts/serving_deps.py

images: venv serving-deps node-bins ## operator, weights, training, serving-cpu, pause images built here (buildah, Debian base, root); cached by their inputs
	$(PY) -m alpaca_dev.images build $(IMAGES) $(if $(PAUSE_BINARY),--pause-binary $(PAUSE_BINARY))

thirdparty: ## KubeRay, helm, KWOK, Karpenter (KWOK provider) and Kueue built from their Go modules, KubeRay's and Karpenter's CRDs (cached)
	@scripts/thirdparty.sh crds >/dev/null
	@scripts/thirdparty.sh kuberay >/dev/null
	@scripts/thirdparty.sh helm >/dev/null
	@scripts/thirdparty.sh kwok >/dev/null
	@scripts/thirdparty.sh karpenter-kwok >/dev/null
	@scripts/thirdparty.sh kueue >/dev/null

# Three xdist workers on two cores: the node tier alone keeps the CPUs 53% busy (it waits for
# pods, the apiserver, Ray); a third worker fills the gaps (docs/decisions.md 35).
PYTEST_WORKERS ?= 3

test: venv k8s-bins node-bins serving-deps images thirdparty lint ## everything: unit, real apiserver, operator e2e, real serving, real node (what CI runs)
	ALPACA_K8S_BINS="$$(scripts/k8s-bins.sh | tail -n 1)" $(PY) -m pytest tests --basetemp=.pytest-tmp -n $(PYTEST_WORKERS) --dist loadgroup --durations=25

demo: venv k8s-bins node-bins serving-deps images thirdparty ## a real node here (root): helm install, SmolLM2 served by pods, a chat answer through the Service; Ctrl-C stops all
	$(PY) -m alpaca_dev.demo --repo . $(if $(DEMO_ONCE),--once)

clean: ## remove the venv and build leftovers (the binary cache outside the repo stays)
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

-include mk/*.mk

golden: venv ## regenerate the renderers' golden files (review the diff)
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/unit/render --basetemp=.pytest-tmp-golden -p no:cacheprovider && rm -rf .pytest-tmp-golden
