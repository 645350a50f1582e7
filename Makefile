# workerfleet's entry points. Every target does its own set-up (venv, Debian tools, helm,
# the Kubernetes test binaries), idempotently, so a fresh machine needs nothing else.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export WORKERFLEET_CACHE ?= $(HOME)/.cache/workerfleet
export PATH := $(CURDIR)/.venv/bin:$(WORKERFLEET_CACHE)/bin:$(PATH)
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: help deps demo-deps node-deps venv testbin images lint test test-fast e2e chaos chart-check demo dist docs screenshots bench \
        bench-runtime bench-autoscaler bench-operator bench-soak crd install-yaml clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

deps: ## install redis-server, rabbitmq-server, prometheus/promtool, chromium + chromium-driver, helm, kubectl, checkov, ElasticMQ (idempotent)
	@bash scripts/ensure-deps.sh

demo-deps: ## only what `make demo` runs: redis-server and prometheus, plus the broker DEMO_ARGS names (idempotent)
	@bash scripts/ensure-deps.sh --demo $(DEMO_ARGS)

node-deps: ## install what images and the real e2e node need: mmdebstrap, umoci, containerd, runc, CNI (idempotent)
	@bash scripts/ensure-node-deps.sh

venv: ## create/refresh .venv with the project and its dev tools
	@bash scripts/ensure-venv.sh

testbin: ## build (once per version, cached outside the repo) the Kubernetes control plane for e2e tests
	@bash scripts/testbin.sh

images: node-deps venv ## the operator and example worker images as OCI archives in dist/ (no Docker; cached by inputs)
	@bash scripts/build-images.sh operator worker

lint: venv ## ruff, mypy --strict, import-linter contracts
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	.venv/bin/lint-imports

test: deps node-deps venv testbin lint ## everything CI runs: lint, then the e2e, chaos and packaging tests in a pytest process beside the rest (scripts/run-tests.sh)
	PY=$(PY) bash scripts/run-tests.sh

test-fast: deps venv ## the tests without the control plane and the chaos run
	$(PYTEST) -p no:cacheprovider -m "not e2e and not chaos" tests

e2e: deps node-deps venv testbin ## only the end-to-end tests on the real control plane and the real node
	$(PYTEST) -p no:cacheprovider -m e2e tests

chaos: deps venv ## only the fault suite: scenarios on real processes, judged by history (CHAOS_JOBS=N for more)
	$(PYTEST) -p no:cacheprovider -m chaos tests

chart-check: deps venv ## only the packaging checks: helm lint/template, promtool, checkov, RBAC
	$(PYTEST) -p no:cacheprovider -m chart tests

demo: demo-deps venv ## the whole system locally: embedded Redis, worker processes, autoscaler, Prometheus
	.venv/bin/workerfleet demo $(DEMO_ARGS)

dist: deps venv ## wheel + sdist, the chart package (helm package) and SHA256SUMS in dist/
	@bash scripts/build-dist.sh

# The docs site (docs/ + mkdocs.yml) into site/. --strict fails on any warning: a broken link
# or anchor between pages, a nav entry without its page, a page left out of the nav. Then every
# repository path, test, package-tree entry and make target the docs name must exist
# (scripts/check_doc_paths.py). External http(s) links are NOT fetched (no network needed);
# `make test` runs both checks (tests/test_docs_site.py).
docs: venv ## the docs site in site/ (strict: broken links and stale repo paths fail the build)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site
	$(PY) scripts/check_doc_paths.py

screenshots: deps venv ## refresh the console screenshots in docs/images/ (a real chromium run)
	WORKERFLEET_SCREENSHOTS=$(CURDIR)/docs/images $(PYTEST) -p no:cacheprovider -q \
	  tests/workerfleet_operator/test_console_browser.py::test_pages_render_filters_work_and_a_replay_really_reenqueues

bench: bench-runtime bench-autoscaler bench-operator ## every benchmark

bench-runtime: deps venv ## throughput vs rq, arq, celery, dramatiq, saq, taskiq, BullMQ; on RabbitMQ and SQS too
	bash bench/runtime/run.sh

bench-autoscaler: deps venv ## reaction time of the autoscaler vs KEDA's defaults
	$(PY) bench/autoscaler_reaction.py

bench-operator: deps venv testbin ## 10,000 WorkerPools on the real kube-apiserver (then 1,000 on the emulator): Ready time, RSS, writes, Redis round trips
	$(PY) bench/operator_scale.py --apiserver real
	$(PY) bench/operator_scale.py --apiserver emulator

bench-soak: deps venv testbin ## 50 busy WorkerPools for 5 min on the real control plane: status writes, Events, log bytes
	$(PY) bench/operator_soak.py

crd: venv ## regenerate deploy/crds/ from the WorkerPool pydantic models
	$(PY) scripts/gen_crd.py

install-yaml: deps venv ## refresh the chart's copies (CRD, alerts, dashboard) and render deploy/install.yaml
	$(PY) scripts/render_install.py

clean: ## remove the venv and caches inside the repo (never the cache in ~/.cache)
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
