"""The sections of a model's config.toml that shape how it is served (batching, padding,
tokenizer, version policy, warm-up); config.py assembles them into ModelConfig."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    # strict: a TOML string or boolean where a number belongs is an error, not coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BatchingConfig(Strict):
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


class PaddingConfig(Strict):
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


class TokenizerConfig(Strict):
    """`[tokenizer]`: clients may send raw text as the BYTES input `input` (one string per
    sample) instead of token ids; `file` is a HuggingFace tokenizer.json in the model's
    directory, and texts longer than `max_length` tokens are truncated."""

    file: str = "tokenizer.json"
    input: str = "text"
    max_length: Annotated[int, Field(ge=1, le=1_000_000)] = 512


Positive = Annotated[float, Field(gt=0)]


class ImageConfig(Strict):
    """`[image]`: clients may send encoded images (JPEG, PNG, ...) as the BYTES input
    `input`, one per sample, instead of the model's float input `tensor` (default: its only
    float input): each is decoded, its short side resized to `resize`, centre-cropped to
    `crop` x `crop`, scaled to [0, 1] in `channels` order, normalised by `mean` and `std` and
    laid out as `layout`, in `threads` decoding threads (default: the cores up to 4, or all
    cores but one for a model computing only on GPUs)."""

    input: str = "image"
    tensor: str | None = None
    resize: Annotated[int, Field(ge=1, le=16384)] = 256
    crop: Annotated[int, Field(ge=1, le=16384)] = 224
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    mean: Annotated[list[float], Field(min_length=3, max_length=3)] = [0.0, 0.0, 0.0]
    std: Annotated[list[Positive], Field(min_length=3, max_length=3)] = [1.0, 1.0, 1.0]
    channels: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    threads: Annotated[int, Field(ge=1, le=256)] | None = None

    @model_validator(mode="after")
    def _crop_fits(self) -> ImageConfig:
        if self.crop > self.resize:
            raise ValueError(f"image.crop {self.crop} is larger than image.resize {self.resize}")
        return self


class VersionPolicy(Strict):
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


class WarmupConfig(Strict):
    """`[warmup]`: the sample a model warms up on before it reports ready, instead of
    synthetic inputs (as Triton's model_warmup): `file` is a NumPy .npz in the model's
    directory holding one array per input (batch axis first; strings as str arrays). Every
    warm-up batch size runs it, its rows repeated to fill the batch. A failure fails the
    load, where a failing synthetic warm-up only logs a warning."""

    file: str
