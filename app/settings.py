"""Server settings: one pydantic-settings class, read from BATCHSERVE_* environment variables.

The CLI's flags override the environment; anything not given falls back to the defaults here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.metrics.families import LATENCY_BUCKETS


class Settings(BaseSettings):
    """Everything the server needs to start; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="BATCHSERVE_", extra="forbid")

    model_repository: Path = Field(
        default=Path("models"), description="Directory holding <model>/<version>/model.onnx."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port; 0 picks a free one.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    strict_readiness: bool = Field(
        default=True,
        description="Report the server ready only when every model in the repository loaded "
        "(Triton's default). Off: ready once loading finished, whatever failed.",
    )
    default_max_queue_size: int = Field(
        default=1024,
        ge=1,
        description="Requests a model version may hold queued when its config sets no limit.",
    )
    default_max_queue_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Bytes of input tensors a model version may hold queued when its config "
        "sets no limit; beyond it requests are answered 429 (one request is always admitted "
        "to an empty queue).",
    )
    default_timeout_ms: float | None = Field(
        default=None,
        gt=0,
        description="Deadline for requests that set no `parameters.timeout` and whose model "
        "sets no default: past it, a request still queued is answered 504, uncomputed.",
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; above it the answer is 413.",
    )
    repository_poll_s: float | None = Field(
        default=None,
        gt=0,
        description="Scan the model repository this often and load new or changed models, "
        "unload removed ones (Triton's poll mode); off by default.",
    )
    drain_timeout_s: int = Field(
        default=30,
        ge=1,
        description="On SIGTERM, how long to finish the requests already received before "
        "exiting anyway (keep Kubernetes' terminationGracePeriodSeconds above it).",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="When set, /v2/models/* and /v2/repository/* need `Authorization: Bearer "
        "<token>` (health, server metadata and /metrics stay open for probes and scrapers).",
    )
    model_control: bool = Field(
        default=False,
        description="Enable POST /v2/repository/models/{m}/load and /unload (off: 403).",
    )
    management_token: SecretStr | None = Field(
        default=None,
        description="When set, load and unload need `Authorization: Bearer <this token>`.",
    )
    metrics: bool = Field(
        default=True,
        description="Collect metrics and statistics. Off only to measure what they cost.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Also serve /metrics on this port (as Triton's 8002), from a thread of its "
        "own, so it can stay private and answers while the API is saturated.",
    )
    latency_buckets: tuple[float, ...] = Field(
        default=LATENCY_BUCKETS,
        description="Upper bounds (seconds) of the latency histograms' buckets.",
    )

    @field_validator("latency_buckets")
    @classmethod
    def _ascending(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError("latency_buckets must be positive, strictly ascending seconds")
        return buckets
