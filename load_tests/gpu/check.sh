#!/usr/bin/env bash
# The GPU check: batchserve on cuda:0 against raw ONNX Runtime on the same GPU, after the
# CUDA tests (tests/gpu); prints one table. For a host without network, from the offline
# bundle load_tests/gpu/transfer.py packs (the onnxruntime-gpu wheel, a few small wheels, the
# text model), installed into a folder of its own ahead of the host's python3 packages; with
# network, `make gpu-check` runs the same check from the project's .venv.
#
#   bash load_tests/gpu/check.sh --receive     after each part copied in: keep it aside
#   bash load_tests/gpu/check.sh [ARGS]        once every part is there: join, install,
#                                              run tests/gpu and the check (ARGS go to
#                                              load_tests/gpu/check.py)
#   bash load_tests/gpu/check.sh --cpu [ARGS]  no GPU: the same check on the CPU with .venv
#                                              (--quick for a small one; the suite runs it so)
#
# README "Check it on a GPU" has the steps. Whole check: about 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE="${BATCHSERVE_GPU_STATE:-/tmp/batchserve-gpu}"

case "${1:-}" in
  --receive)
    exec python3 load_tests/gpu/transfer.py receive --state "$STATE"
    ;;
  --cpu)
    shift
    exec "${PYTHON:-.venv/bin/python}" -m load_tests.gpu.check --cpu "$@"
    ;;
esac

started=$(date +%s)
python3 load_tests/gpu/transfer.py receive --state "$STATE"
payload=$(python3 load_tests/gpu/transfer.py join --state "$STATE" | tail -n 1)

# The wheels go to a folder of their own, first on PYTHONPATH: onnxruntime-gpu there shadows
# the image's CPU onnxruntime, and nothing of the image is changed.
site="$STATE/site"
if [ ! -f "$site/.installed" ]; then
  rm -rf "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --root-user-action=ignore \
    --target "$site" "$payload"/wheels/*.whl
  touch "$site/.installed"
fi
export PYTHONPATH="$site:$PWD"
export PYTHONUNBUFFERED=1

# onnxruntime-gpu finds CUDA's and cuDNN's libraries in the image's nvidia-* pip packages
# (torch's) only through the library path: its preload looks beside itself, in $site.
cuda_libs=$(python3 - <<'EOF'
import glob
import os
import site

found = set()
for base in site.getsitepackages():
    found.update(glob.glob(os.path.join(base, "nvidia", "*", "lib")))
print(":".join(sorted(found)))
EOF
)
export LD_LIBRARY_PATH="${cuda_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 - <<'EOF'
import onnxruntime as ort

import app.main  # every import the server needs is there

print("onnxruntime", ort.__version__, "from", ort.__file__)
print("providers", ort.get_available_providers())
EOF

out="${OUT:-$STATE/out}"
mkdir -p "$out"
status=0
python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -n 15 | tee "$out/tests_gpu.log" \
  || status=1
python3 -m load_tests.gpu.check --minilm "$payload/minilm" --out "$out/gpu_check.json" "$@" \
  2>&1 | tee "$out/gpu_check.log" || status=1
echo "check.sh: $(($(date +%s) - started)) s, status $status"
exit "$status"
