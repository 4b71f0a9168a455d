"""A model's config.toml: its schema, defaults and error messages.

Everything not in the ONNX graph lives here: batching, instances, version policy. Unknown keys
and bad values fail the load with a message naming the file, the key and what is allowed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.cores import available_cores
from app.errors import ModelLoadError

CONFIG_FILE = "config.toml"

#: max_batch_size given to a model with no config whose graph has a dynamic first axis.
AUTO_MAX_BATCH_SIZE = 32


class _Strict(BaseModel):
    # strict: a TOML string or boolean where a number belongs is an error, not coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BatchingConfig(_Strict):
    """`[batching]`: how long a batch may wait to fill, and how much may queue."""

    max_queue_delay_ms: Annotated[float, Field(ge=0, le=60_000)] = 0.0
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = []
    max_queue_size: Annotated[int, Field(ge=1)] | None = None
    #: Bytes of queued input tensors beyond which requests are answered 429.
    max_queue_bytes: Annotated[int, Field(ge=1)] | None = None
    #: Samples (first-axis rows) queued beyond which requests are answered 429.
    max_queue_samples: Annotated[int, Field(ge=1)] | None = None
    #: Latency-target batching: batch sizes, waits and load shedding chosen online to keep
    #: queue wait + compute under this (instead of max_queue_delay_ms).
    latency_target_ms: Annotated[float, Field(gt=0, le=600_000)] | None = None
    #: Deadline for requests that set no `parameters.timeout`; None: the server's default.
    default_timeout_ms: Annotated[float, Field(gt=0, le=3_600_000)] | None = None
    #: `parameters.priority` 1 (highest) .. priority_levels; FIFO within a level.
    priority_levels: Annotated[int, Field(ge=1, le=100)] = 1
    #: Level of requests that name none (default: the lowest, priority_levels).
    default_priority: Annotated[int, Field(ge=1, le=100)] | None = None

    @model_validator(mode="after")
    def _one_way_to_wait(self) -> BatchingConfig:
        if self.latency_target_ms is not None and self.max_queue_delay_ms > 0:
            raise ValueError(
                "give max_queue_delay_ms (a fixed wait) or latency_target_ms (waits chosen to "
                "meet the target), not both"
            )
        return self

    @model_validator(mode="after")
    def _priority_in_range(self) -> BatchingConfig:
        if self.default_priority is not None and self.default_priority > self.priority_levels:
            raise ValueError(
                f"default_priority {self.default_priority} is above priority_levels "
                f"{self.priority_levels}"
            )
        return self


class InstanceConfig(_Strict):
    """`[[instances]]`: `count` workers on `device`, each an ORT session with `threads`."""

    device: str = "cpu"
    count: Annotated[int, Field(ge=1, le=256)] = 1
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device != "cpu" and not re.fullmatch(r"cuda:\d+", device):
            raise ValueError('device must be "cpu" or "cuda:N" (N = GPU index)')
        return device

    def resolved_threads(self) -> int:
        """Threads per session; by default the cores shared out among this line's workers.

        Measured on a 2-core machine (load_tests/bench.py, load generator on the same cores):
        one 2-thread worker served a compute-bound CNN at 94-95% of raw ONNX Runtime's best
        and a medium one at 78%, with batch-1 latency 1.8x lower than two 1-thread workers,
        whose saturation throughput was the same (heavy) or 3% higher (medium). Half the
        cores (the earlier default) left compute-bound models at half speed. Tiny models
        (digits) are faster on 1 thread (0.015 vs 0.046 ms per batch-1 run): set threads = 1.
        """
        if self.threads is not None:
            return self.threads
        return max(1, available_cores() // self.count)


class PaddingConfig(_Strict):
    """`[padding]`: requests of different lengths share a batch (variable-length batching).

    Each input named in `inputs` has one variable non-batch axis; requests are padded along
    it to the longest in the batch with the value given. Outputs whose graph dims share that
    axis's symbolic name are cut back per request; `outputs` names others (name = axis).
    """

    inputs: dict[str, int | float]
    outputs: dict[str, Annotated[int, Field(ge=1)]] = {}
    #: Padded positions of a batch stay at or below this share of all its positions.
    max_padding_ratio: Annotated[float, Field(ge=0, le=1)] = 0.25

    @field_validator("inputs")
    @classmethod
    def _some_inputs(cls, inputs: dict[str, int | float]) -> dict[str, int | float]:
        if not inputs:
            raise ValueError("name at least one input to pad, e.g. inputs = { input_ids = 0 }")
        return inputs


class TokenizerConfig(_Strict):
    """`[tokenizer]`: clients may send raw text as the BYTES input `input` (one string per
    sample) instead of token ids; `file` is a HuggingFace tokenizer.json in the model's
    directory, and texts longer than `max_length` tokens are truncated."""

    file: str = "tokenizer.json"
    input: str = "text"
    max_length: Annotated[int, Field(ge=1, le=1_000_000)] = 512


class VersionPolicy(_Strict):
    """`version_policy`: exactly one of `latest = N`, `all = true`, `specific = [..]`."""

    latest: Annotated[int, Field(ge=1)] | None = None
    all: bool | None = None
    specific: list[Annotated[int, Field(ge=1)]] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give only one of latest, all, specific (got {chosen})")
        if self.all is False:
            raise ValueError("'all' can only be true; use latest = N or specific = [..]")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to load out of those present on disk, ascending."""
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]


class ModelConfig(_Strict):
    """The whole config.toml; every key is optional."""

    max_batch_size: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    batching: BatchingConfig = BatchingConfig()
    instances: list[InstanceConfig] = Field(default_factory=lambda: [InstanceConfig()])
    version_policy: VersionPolicy = VersionPolicy()
    padding: PaddingConfig | None = None
    tokenizer: TokenizerConfig | None = None
    #: Refuse (400) requests whose floating-point inputs hold NaN or infinity.
    reject_nonfinite: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if not self.instances:
            raise ValueError("instances must list at least one instance")
        too_big = [p for p in self.batching.preferred_batch_sizes if p > (self.max_batch_size or 0)]
        if self.max_batch_size is not None and too_big:
            raise ValueError(
                f"batching.preferred_batch_sizes {too_big} exceed max_batch_size "
                f"{self.max_batch_size}"
            )
        return self


def load_model_config(model_dir: Path) -> ModelConfig:
    """Read `<model_dir>/config.toml`, or the defaults when there is none."""
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return ModelConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read: {exc}") from None
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ModelLoadError(f"{path}: " + "; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: Any) -> str:
    """One pydantic error as `key: problem (allowed: ...)`."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(loc[:-1]))
        return f"unknown key '{key}' (allowed here: {allowed})"
    message = str(error["msg"])
    if error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
        if isinstance(error.get("input"), dict):  # a whole section: its keys are in the message
            return f"{key}: {message}"
    if loc:
        return f"{key}: {message} (got {error.get('input')!r})"
    return message


def _fields_at(loc: list[str]) -> list[str]:
    """Field names of the config section at `loc` (list indices skipped)."""
    model: type[BaseModel] = ModelConfig
    for part in loc:
        if part.isdigit():
            continue
        annotation = model.model_fields[part].annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))
    return list(model.model_fields)
