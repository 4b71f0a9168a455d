"""Server settings: one pydantic-settings class, read from BATCHSERVE_* environment variables.

The CLI's flags override the environment; anything not given falls back to the defaults here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.metrics.families import LATENCY_BUCKETS


class Settings(BaseSettings):
    """Everything the server needs to start; see README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="BATCHSERVE_", extra="forbid")

    model_repository: Path = Field(
        default=Path("models"), description="Directory holding <model>/<version>/model.onnx."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port; 0 picks a free one.")
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="Port of the gRPC service (KServe v2 GRPCInferenceService and "
        "grpc.health.v1), on the same host; 0 turns gRPC off.",
    )
    grpc_max_concurrent_streams: int = Field(
        default=1024, ge=1, description="Concurrent gRPC calls allowed on one connection."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    strict_readiness: bool = Field(
        default=True,
        description="Report the server ready only when every model in the repository loaded "
        "(Triton's default). Off: ready once loading finished, whatever failed.",
    )
    autotune: bool = Field(
        default=True,
        description="Profile a model whose config.toml sets no [[instances]] when it loads, "
        "and serve it with the layout and batch sizes measured fastest (off: the defaults).",
    )
    autotune_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Time the profile at load may take per model version.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where tuning results are kept between loads (default "
        "$XDG_CACHE_HOME/batchserve, else ~/.cache/batchserve).",
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
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="Largest image (width x height) a model's [image] stage decodes; a "
        "larger one is answered 400 before it is decoded (Pillow's decompression-bomb "
        "limit is set to it too).",
    )
    # -- the HTTP front: timeouts and limits for slow, idle and oversized clients ---------
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must send a request's headers within this long (from "
        "connecting, or from the request's first byte); past it, 408 and closed.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A request body must arrive within this long, plus 1 s per "
        "min_body_bytes_per_s bytes received; past it, 408 and closed.",
    )
    min_body_bytes_per_s: int = Field(
        default=1024 * 1024,
        ge=1,
        description="The slowest body upload allowed beyond body_timeout_s (bytes/s).",
    )
    keep_alive_timeout_s: int = Field(
        default=5,
        ge=1,
        description="An idle keep-alive connection is closed after this long.",
    )
    max_url_bytes: int = Field(
        default=8192, ge=256, description="Longest request target (path and query); 414."
    )
    max_header_line_bytes: int = Field(
        default=8192, ge=256, description="Longest single header (name and value); 431."
    )
    max_header_bytes: int = Field(
        default=65536,
        ge=1024,
        description="Largest request line and headers together; 431.",
    )
    max_header_count: int = Field(
        default=100, ge=8, description="Most headers a request may have; 431."
    )
    max_connections: int = Field(
        default=4096,
        ge=8,
        description="Open connections served for the API; past it, API requests get 503 with "
        "Retry-After while health, readiness and metrics are still served, on up to 64 more "
        "connections; an idle connection is closed to make room for a new one. Capped below "
        "the open-files limit.",
    )
    max_pending_body_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description="Bytes of request bodies held at once across all connections (received, "
        "not yet answered); a request that would take it past this gets 503 with Retry-After.",
    )
    decode_in_thread_bytes: int = Field(
        default=1024 * 1024,
        ge=0,
        description="Request bodies larger than this are decoded in a worker thread, so the "
        "event loop keeps answering (probes, small requests) meanwhile.",
    )
    decode_in_process_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=0,
        description="JSON request bodies larger than this are parsed in a separate process: "
        "the JSON parser holds the GIL, so a thread would still stall the event loop.",
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
    model_memory: str | None = Field(
        default=None,
        description="Memory budget for loaded models: bytes (8GiB, 512MB) or a share of the "
        "container's memory limit (0.5, 50%). Set, only pinned models load at start; the "
        "others load on their first request, and idle ones, those asked least per byte "
        "first, are unloaded to make room. Unset: every model loads at start and stays.",
    )
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Under a memory budget, models loaded at start and never unloaded to "
        "make room (as `pinned = true` in their config.toml); comma-separated names.",
    )
    max_concurrent_loads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Model loads that may run at once (each is measured alone at 1).",
    )
    model_room_wait_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="Under a memory budget, how long a load waits for models that requests "
        "hold to be let go when only they stand in its way; then its requests get 503.",
    )
    share_cores: bool = Field(
        default=True,
        description="The CPU workers of all models share the cores this process may use: a "
        "batch runs once its worker's threads fit among the cores not busy, so many resident "
        "models never run more compute threads than cores. Off: every worker runs at once.",
    )
    malloc_mmap_threshold: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        le=32 * 1024 * 1024,
        description="With glibc: memory blocks of at least this many bytes are mapped on "
        "their own and handed back to the system when freed, so an unloaded model's memory "
        "leaves the process; 0 keeps glibc's own threshold, which rises to the largest "
        "block freed. MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES, where set, win.",
    )
    metrics: bool = Field(
        default=True,
        description="Collect metrics and statistics. Off only to measure what they cost.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Also serve /metrics and the health probes (/v2/health/live, /ready) on "
        "this port (as Triton's 8002), from threads of their own, so they can stay private and "
        "answer while the API is saturated. Point Kubernetes' probes here.",
    )
    liveness_stall_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="The probes on --metrics-port answer 503 once the event loop has not run "
        "for this long: liveness there fails when the loop is wedged, not when it is busy.",
    )
    latency_buckets: tuple[float, ...] = Field(
        default=LATENCY_BUCKETS,
        description="Upper bounds (seconds) of the latency histograms' buckets.",
    )

    @field_validator("model_memory")
    @classmethod
    def _budget(cls, text: str | None) -> str | None:
        """Refuse a budget that cannot be read at start, not at the first load."""
        from app.repository.budget import parse_memory_budget

        if text:
            try:
                parse_memory_budget(text)
            except Exception as exc:
                raise ValueError(str(exc)) from None
        return text

    @field_validator("preload", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("latency_buckets")
    @classmethod
    def _ascending(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError("latency_buckets must be positive, strictly ascending seconds")
        return buckets
