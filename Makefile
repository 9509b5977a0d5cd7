# PushTask: every command a developer or CI needs. `make demo` runs the product locally,
# `make test` runs every test; both set up what they need on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
export PIP_CACHE_DIR ?= $(HOME)/.cache/pip
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test unit integration e2e lint crds chart-crds up down status demo bench e2e-kind kind-images screenshots clean

# The Python environment (pip's cache lives in ~/.cache, so a second machine setup is quick).
$(VENV)/.installed: pyproject.toml
	bash scripts/bootstrap.sh $(VENV)
	@touch $@

setup: $(VENV)/.installed

# The operator scenarios tests/kind runs unchanged on the real node: `make test` runs them
# there only (one path where one serves; `make e2e` still runs them on devstack).
ON_KIND_TOO := $(foreach t,campaign_finishes_each_user_exactly_once pause_stops_sending_and_resume_finishes \
  scale_subresource_drives_the_deployment stop_then_a_new_run_counts_from_zero,\
  --deselect tests/e2e/test_operator_e2e.py::test_$(t))

## test: every test (unit, integration on the MongoDB-wire servers, e2e on devstack, then
## the kind suite on a real node: docs/kind.md) and lint
test: setup lint
	$(PY) -m devstack build
	$(PY) -m devstack.linttools   # promtool, kube-score: the chart's checkers (cached)
	$(PY) -m devstack.kstatus     # kstatus and Flux's evaluator for the GitOps e2e (cached)
	bash scripts/bench-setup.sh $(VENV)   # the Celery baseline of the bench smoke test
	$(PYTEST) tests --ignore=tests/kind $(ON_KIND_TOO) -p no:cacheprovider --durations=25
	bash scripts/e2e-kind.sh      # after the devstack suite: its image builds never load its timing tests

unit: setup
	$(PYTEST) tests/unit -p no:cacheprovider

integration: setup
	$(PYTEST) -m integration tests -p no:cacheprovider

e2e: setup
	$(PY) -m devstack build
	$(PY) -m devstack.kstatus
	$(PYTEST) -m e2e tests -p no:cacheprovider

## screenshots: the console's pictures in docs/, taken by its browser e2e test on devstack
screenshots: setup
	$(PY) -m devstack build
	PUSHTASK_SCREENSHOTS=docs $(PYTEST) tests/e2e/test_console_e2e.py -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check pushtask operator worker console client tracker devstack tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests bench
	$(VENV)/bin/lint-imports

## crds: regenerate crds/, the chart's copy and the field reference from the models
crds: setup
	$(PY) -m pushtask.crdgen > crds/pushtask.yaml
	$(PY) -m pushtask.crdgen --reference > docs/reference.md
	$(MAKE) chart-crds

# Helm installs the chart's crds/ folder; it is a copy of the generated file (a test checks).
chart-crds:
	cp crds/pushtask.yaml charts/pushtask/crds/pushtask.yaml

up: setup
	$(PY) -m devstack up

down: setup
	$(PY) -m devstack down

status: setup
	$(PY) -m devstack status

## demo: devstack, the chart, a local webhook sink, an example campaign with live progress
demo: setup
	$(PY) -m devstack up
	$(PY) -m devstack.demo

## bench: delivery benchmark against the ceiling, naive and Celery baselines (docs/benchmarks.md)
bench: setup
	bash scripts/bench-setup.sh $(VENV)
	$(PY) -m devstack up --only mongo
	$(PY) bench/worker.py --rounds 3

## e2e-kind: the chart on a kind cluster and tests/kind (docs/kind.md); Docker installed
## and started when missing; without a registry every image is built here, offline
e2e-kind: setup
	bash scripts/e2e-kind.sh

## kind-images: only build (or find cached) the offline node, product and MongoDB images
kind-images: setup
	bash scripts/kind/build-all.sh

clean:
	-$(PY) -m devstack down
	rm -rf $(VENV) .devstack build *.egg-info
