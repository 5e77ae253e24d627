# gatewaylb: every command a developer or CI needs. `make test` and `make demo`
# work as the first command on a fresh clone: each first runs scripts/setup.sh
# with its own profile (demo: what the agent needs; test: + test tools and the
# venv's dev extra; bench: + load generators), which is idempotent and quick
# when there is nothing to do. `make setup` installs every profile.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PY := .venv/bin/python
# Directories that git dropped because they were empty are skipped rather than
# handed to ruff (which fails on a missing path).
LINT_DIRS := $(wildcard agent tests bench)
TEST_DIRS := tests/unit tests/e2e tests/k8s

# Run pytest on the existing ones of the given directories. Exit code 5 ("no
# tests collected") is success, since test directories fill in over time; any
# other non-zero code (failures, errors, usage) fails make.
define run_pytest
	dirs=(); for d in $(1); do if [ -d "$$d" ]; then dirs+=("$$d"); fi; done; \
	if [ $${#dirs[@]} -eq 0 ]; then echo "pytest: none of $(1) exists; nothing to run"; exit 0; fi; \
	rc=0; $(PY) -m pytest -q -p no:cacheprovider "$${dirs[@]}" || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected in $${dirs[*]} (not a failure)"; rc=0; fi; \
	exit $$rc
endef

.DEFAULT_GOAL := help
.PHONY: help setup setup-demo setup-test setup-bench lint test unit demo bench clean \
	k8s-bin controlplane controlplane-down cluster cluster-down conformance

help:
	@echo "make setup   install Debian packages, kernel header links and .venv (root; every profile)"
	@echo "make test    lint, then unit + e2e + k8s tests (root for e2e; installs the test tools)"
	@echo "make unit    unit tests only (no root needed)"
	@echo "make demo    run the demo lab (root; installs only what the agent and demo need)"
	@echo "make bench   run every bench/*.py (installs the load generators)"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make clean   remove .venv and caches"
	@echo "make k8s-bin            build the test cluster binaries into tests/k8s/bin (no-op when built)"
	@echo "make controlplane       start etcd + kube-apiserver on 127.0.0.1 in the background"
	@echo "make cluster            start a one-node cluster (control plane, controllers, a lab node that runs pods)"
	@echo "make cluster-down       stop it"
	@echo "make conformance        the upstream Gateway API conformance suite on a one-node cluster"
	@echo "make controlplane-down  stop it"

setup:
	@scripts/setup.sh all

# One profile each (scripts/debian-packages.txt): what the target below needs.
setup-demo:
	@scripts/setup.sh demo

setup-test:
	@scripts/setup.sh test

setup-bench:
	@scripts/setup.sh bench

lint: setup-test
	.venv/bin/ruff check $(LINT_DIRS)
	.venv/bin/ruff format --check $(LINT_DIRS)
	.venv/bin/mypy

test: setup-test lint k8s-bin
	@$(call run_pytest,$(TEST_DIRS))

unit: setup-test
	@$(call run_pytest,tests/unit)

demo: setup-demo
	.venv/bin/gatewaylb demo

bench: setup-bench
	@for f in bench/*.py; do \
		if [ ! -e "$$f" ]; then echo "bench: no bench/*.py"; break; fi; \
		echo "== $$f"; $(PY) "$$f"; \
	done

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

# The test cluster's binaries (tests/k8s): kube-apiserver, etcd, the
# controller manager, the scheduler and kubectl from tests/k8s/controlplane,
# and the echo-basic and coredns images' programs, into tests/k8s/bin. ~8 min
# cold, a no-op (milliseconds) when the binaries match their modules.
k8s-bin:
	@scripts/build-controlplane.sh

# Runs in the background; prints the admin KUBECONFIG. State, logs and data
# are under /run/gatewaylb-controlplane (root) or .run/controlplane.
controlplane: setup-test k8s-bin
	@$(PY) tests/k8s/controlplane.py up

controlplane-down:
	@py=$(PY); [ -x "$$py" ] || py=python3; "$$py" tests/k8s/controlplane.py down

# A one-node cluster in the background (tests/k8s/cluster.py): prints the
# KUBECONFIG, the kubectl to use and how to run a command in the client
# namespace or on the node. State and logs are under /run/gatewaylb-cluster.
cluster: setup-test k8s-bin
	@$(PY) tests/k8s/cluster.py up

cluster-down:
	@py=$(PY); [ -x "$$py" ] || py=python3; "$$py" tests/k8s/cluster.py down

# The upstream Gateway API conformance suite (v1.6.1, unmodified) against
# gatewaylb deployed as its DaemonSet on a one-node cluster of its own; writes
# conformance/reports/v1.6.1/gatewaylb-<version>.yaml.
conformance: setup-test k8s-bin
	@$(PY) tests/k8s/run_conformance.py --quiet
