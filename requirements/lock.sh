#!/usr/bin/env bash
# Regenerate the container images' locks: `make lock` (or run this with uv on PATH).
#   requirements/gpu.txt  pyproject.toml's runtime dependencies as Linux x86-64 resolves them
#                         (onnxruntime-gpu)
#   requirements/cpu.txt  the same with ONNX Runtime's CPU build at the same version, every
#                         other package pinned as in gpu.txt
#   requirements/dev.txt  the test, bench, optimize and models extras under gpu.txt's pins,
#                         versions only: `make` installs the development environment with
#                         them as constraints too (the model builds' torch extras are not
#                         locked: torch is pinned where it is installed)
# All for CPython 3.11 on manylinux x86-64, every package (transitive ones too) pinned with
# `==`, gpu.txt and cpu.txt with their hashes: the Dockerfile installs them with
# --require-hashes --no-deps, and `make` the development environment with gpu.txt and
# dev.txt as constraints.
set -euo pipefail
cd "$(dirname "$0")/.."
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet)
uv pip compile pyproject.toml "${target[@]}" -o requirements/gpu.txt
ort=$(sed -n 's/^onnxruntime-gpu==\([^ ]*\).*/\1/p' requirements/gpu.txt)
echo "onnxruntime==${ort}" > requirements/cpu.in.tmp
trap 'rm -f requirements/cpu.in.tmp' EXIT
uv pip compile pyproject.toml requirements/cpu.in.tmp "${target[@]}" \
  --override requirements/cpu-overrides.txt --constraint requirements/gpu.txt \
  -o requirements/cpu.txt
uv pip compile pyproject.toml --extra test --extra bench --extra optimize --extra models \
  --constraint requirements/gpu.txt --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --quiet -o requirements/dev.txt
# The build backend pyproject.toml's [build-system] names, pinned for building the app's wheel.
echo "setuptools>=68" | uv pip compile - --python-version 3.11 --generate-hashes --quiet \
  -o requirements/build.txt
