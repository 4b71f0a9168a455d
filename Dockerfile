# batchserve container (CPU). `docker build -t batchserve .` then
# `docker run -p 8000:8000 batchserve`; mount your own repository at /models.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin batchserve
COPY --from=build /opt/venv /opt/venv
COPY models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BATCHSERVE_MODEL_REPOSITORY=/models \
    BATCHSERVE_HOST=0.0.0.0 \
    BATCHSERVE_PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=1.5)"]
# Exec form: SIGTERM reaches the server itself, which drains before it exits.
ENTRYPOINT ["batchserve", "serve"]
