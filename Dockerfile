# batchserve container images (README "Deploy"). Two targets:
#   docker build -t batchserve:cpu .                 cpu, the default (the last stage): Debian
#                                                    slim, ONNX Runtime's CPU build
#   docker build --target gpu -t batchserve:gpu .    NVIDIA CUDA 13 + cuDNN 9 runtime,
#                                                    onnxruntime-gpu (needs driver >= 580)
#   docker run --rm -p 8000:8000 -p 8001:8001 batchserve:cpu    (HTTP on 8000, gRPC on 8001)
# The shipped models are baked in at /models; mount your own repository over it
# (-v "$PWD/my-models:/models:ro"; no VOLUME instruction, so no anonymous volume is made per
# container). Every BATCHSERVE_* variable configures the server (README).
#
# Python packages come only from the locks in requirements/ (every package pinned with `==`
# and its hashes, installed with --no-deps; `make lock` regenerates them). Base images are
# pinned by exact tag; add @sha256 digests where your registry policy asks for them.
# Behind a TLS-intercepting proxy, or to install from a mirror of PyPI, give the build a CA
# bundle and an index URL as build secrets (docker and podman alike; neither is kept in the
# image, requirements/with-build-secrets.sh applies them):
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt \
#                --secret id=index_url,src=index-url.txt -t batchserve:cpu .
# The tests (tests/deploy) lint this file with hadolint and start its ENTRYPOINT/CMD with its
# ENV outside Docker, so keep both final stages' runtime instructions alike.

# Keep PYTHON_VERSION equal to PYTHON_IMAGE's version: the gpu image gets the same CPython.
ARG PYTHON_VERSION=3.11.14
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# CUDA major must match onnxruntime-gpu's in requirements/gpu.txt (1.31: CUDA 13, cuDNN 9).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---- gpu: build stage ----------------------------------------------------------------------
# CPython comes from uv's managed builds (self-contained, in /opt/python), so the gpu image
# runs the same Python as the cpu one on NVIDIA's Ubuntu base.
FROM ${CUDA_IMAGE} AS gpu-build
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
COPY requirements/with-build-secrets.sh /usr/local/bin/with-build-secrets
ENV UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed
RUN --mount=type=secret,id=ca_bundle --mount=type=secret,id=index_url \
    with-build-secrets uv python install "${PYTHON_VERSION}" \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv
WORKDIR /src
COPY requirements/gpu.txt requirements/build.txt requirements/
RUN --mount=type=secret,id=ca_bundle --mount=type=secret,id=index_url \
    with-build-secrets uv pip install --python /opt/venv/bin/python --require-hashes \
      --no-deps -r requirements/gpu.txt
COPY pyproject.toml README.md ./
COPY app app
RUN --mount=type=secret,id=ca_bundle --mount=type=secret,id=index_url \
    with-build-secrets uv pip install --python /opt/venv/bin/python --no-deps \
      --build-constraints requirements/build.txt . \
 && uv pip check --python /opt/venv/bin/python

# ---- gpu: the image ------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin batchserve
COPY --from=gpu-build /opt/python /opt/python
COPY --from=gpu-build /opt/venv /opt/venv
COPY models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BATCHSERVE_MODEL_REPOSITORY=/models \
    BATCHSERVE_HOST=0.0.0.0 \
    BATCHSERVE_PORT=8000 \
    BATCHSERVE_GRPC_PORT=8001 \
    BATCHSERVE_CACHE_DIR=/var/cache/batchserve
# Tuning results of models tuned at load (README "Tune"); mount a volume here to keep them.
RUN install -d -o 10001 -g 10001 /var/cache/batchserve
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BATCHSERVE_PORT', '8000') + '/v2/health/ready', timeout=2)"]
# Exec form: the server is PID 1 and gets SIGTERM itself, so it drains before it exits.
ENTRYPOINT ["batchserve", "serve"]

# ---- cpu: build stage ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
COPY --from=uv /uv /usr/local/bin/uv
COPY requirements/with-build-secrets.sh /usr/local/bin/with-build-secrets
ENV UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never
RUN uv venv --python /usr/local/bin/python3 /opt/venv
WORKDIR /src
COPY requirements/cpu.txt requirements/build.txt requirements/
RUN --mount=type=secret,id=ca_bundle --mount=type=secret,id=index_url \
    with-build-secrets uv pip install --python /opt/venv/bin/python --require-hashes \
      --no-deps -r requirements/cpu.txt
COPY pyproject.toml README.md ./
COPY app app
# No `uv pip check` here: pyproject.toml asks for onnxruntime-gpu on Linux x86-64, and this
# image has the CPU build instead, on purpose; check that it imports instead.
RUN --mount=type=secret,id=ca_bundle --mount=type=secret,id=index_url \
    with-build-secrets uv pip install --python /opt/venv/bin/python --no-deps \
      --build-constraints requirements/build.txt . \
 && /opt/venv/bin/python -c "import onnxruntime, app.cli"

# ---- cpu: the image (the default target, so it comes last) --------------------------------
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin batchserve
COPY --from=cpu-build /opt/venv /opt/venv
COPY models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BATCHSERVE_MODEL_REPOSITORY=/models \
    BATCHSERVE_HOST=0.0.0.0 \
    BATCHSERVE_PORT=8000 \
    BATCHSERVE_GRPC_PORT=8001 \
    BATCHSERVE_CACHE_DIR=/var/cache/batchserve
# Tuning results of models tuned at load (README "Tune"); mount a volume here to keep them.
RUN install -d -o 10001 -g 10001 /var/cache/batchserve
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BATCHSERVE_PORT', '8000') + '/v2/health/ready', timeout=2)"]
# Exec form: the server is PID 1 and gets SIGTERM itself, so it drains before it exits.
ENTRYPOINT ["batchserve", "serve"]
