"""Server settings: one pydantic-settings class, read from BATCHSERVE_* environment variables.

The CLI's flags override the environment; anything not given falls back to the defaults here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
