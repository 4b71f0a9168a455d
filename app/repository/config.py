"""A model's config.toml: its schema, defaults and error messages.

Everything not in the ONNX graph lives here: batching, instances, version policy. Unknown keys
and bad values fail the load with a message naming the file, the key and what is allowed.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.cores import available_cores
from app.errors import ModelLoadError
from app.repository.sections import (
    BatchingConfig,
    ImageConfig,
    PaddingConfig,
    Strict,
    TokenizerConfig,
    VersionPolicy,
    WarmupConfig,
)
from app.runtime.providers import CUDA, NVIDIA_PROVIDERS, TENSORRT, known_providers

CONFIG_FILE = "config.toml"


class CudaConfig(Strict):
    """`[instances.cuda]`: CUDAExecutionProvider settings of a GPU instance, under ONNX
    Runtime's own names (its CUDA provider documentation describes each one)."""

    #: Bytes the provider's memory arena may take on the GPU.
    gpu_mem_limit: Annotated[int, Field(ge=1)] | None = None
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] | None = None
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] | None = None
    #: Copies on the default stream (true) or on a stream of their own (false).
    do_copy_in_default_stream: bool | None = None
    cudnn_conv_use_max_workspace: bool | None = None
    use_tf32: bool | None = None
    #: Capture each preferred batch size's run as a CUDA graph and replay it: batches are
    #: padded up to the next preferred size (needs fixed batch sizes, see ModelConfig).
    enable_cuda_graph: bool | None = None

    def provider_options(self) -> dict[str, Any]:
        """The settings given, as CUDAExecutionProvider options."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TensorrtConfig(Strict):
    """`[instances.tensorrt]`: TensorrtExecutionProvider settings (instances whose
    execution_provider is "TensorrtExecutionProvider")."""

    fp16: bool = False
    #: int8 needs a quantized (QDQ) model or a calibration table (provider_options).
    int8: bool = False
    #: Keep built engines on disk so later loads skip the build (minutes for large models).
    engine_cache: bool = False
    timing_cache: bool = False
    #: Where caches go: absolute, or relative to the model's directory. Default: a folder per
    #: model version under the system's temporary directory. Must be writable.
    engine_cache_dir: str | None = None
    max_workspace_bytes: Annotated[int, Field(ge=1)] | None = None
    builder_optimization_level: Annotated[int, Field(ge=0, le=5)] | None = None

    @model_validator(mode="after")
    def _cache_dir_needs_a_cache(self) -> TensorrtConfig:
        if self.engine_cache_dir is not None and not (self.engine_cache or self.timing_cache):
            raise ValueError(
                "engine_cache_dir is only used with engine_cache = true or timing_cache = true"
            )
        return self

    @property
    def caches(self) -> bool:
        return self.engine_cache or self.timing_cache

    def provider_options(self, cache_dir: Path | None) -> dict[str, Any]:
        """TensorrtExecutionProvider options; `cache_dir` is the resolved, writable folder."""
        options: dict[str, Any] = {
            "trt_fp16_enable": self.fp16,
            "trt_int8_enable": self.int8,
            "trt_engine_cache_enable": self.engine_cache,
            "trt_timing_cache_enable": self.timing_cache,
        }
        if cache_dir is not None and self.engine_cache:
            options["trt_engine_cache_path"] = str(cache_dir)
        if cache_dir is not None and self.timing_cache:
            options["trt_timing_cache_path"] = str(cache_dir)
        if self.max_workspace_bytes is not None:
            options["trt_max_workspace_size"] = self.max_workspace_bytes
        if self.builder_optimization_level is not None:
            options["trt_builder_optimization_level"] = self.builder_optimization_level
        return options


_DEVICE = re.compile(r"cpu|cuda(:\d+|:\*)?")


class InstanceConfig(Strict):
    """`[[instances]]`: `count` workers on `device` (per GPU, for several GPUs), each an ORT
    session with `threads`, on ONNX Runtime's provider for that device or the one named."""

    #: "cpu", "cuda:N" (GPU N), "cuda:*" (every visible GPU) or "cuda" with `gpus`.
    device: str = "cpu"
    gpus: list[Annotated[int, Field(ge=0, le=1023)]] | None = None
    count: Annotated[int, Field(ge=1, le=256)] = 1
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    #: Any ONNX Runtime provider by name; default: CPU on "cpu", CUDA on a GPU.
    execution_provider: str | None = None
    #: Options of that provider, passed as ONNX Runtime documents them.
    provider_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    cuda: CudaConfig | None = None
    tensorrt: TensorrtConfig | None = None
    #: "cpu": serve on the CPU (with a warning) where the device or provider is missing,
    #: instead of failing the load.
    fallback: Literal["cpu"] | None = None
    #: Intra-op threads spin between operators (ONNX Runtime's default) instead of
    #: sleeping: a lone batch computes sooner, but the spinning takes core time the event
    #: loop could use. Off by default; tuning turns it on where it measured faster.
    spinning: bool = False
    #: These workers take a batch only while no other worker of the version computes: one
    #: instance with every core's threads answers lone requests fast, beside 1-thread
    #: instances that compute more under load (see README "Tune").
    low_load_only: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError(
                'device must be "cpu", "cuda:N" (GPU N), "cuda:*" (every visible GPU) or '
                '"cuda" with gpus = [..]'
            )
        return device

    @field_validator("gpus")
    @classmethod
    def _distinct_gpus(cls, gpus: list[int] | None) -> list[int] | None:
        if gpus is not None and (not gpus or len(set(gpus)) != len(gpus)):
            raise ValueError("gpus must list GPU indexes, each once, e.g. gpus = [0, 2]")
        return gpus

    @field_validator("execution_provider")
    @classmethod
    def _known_provider(cls, provider: str | None) -> str | None:
        known = known_providers()
        if provider is not None and provider not in known:
            raise ValueError(f"unknown execution provider; ONNX Runtime knows: {', '.join(known)}")
        return provider

    @model_validator(mode="after")
    def _consistent(self) -> InstanceConfig:
        gpu = self.device.startswith("cuda")
        if self.device == "cuda" and self.gpus is None:
            raise ValueError('device = "cuda" needs gpus = [..]; or use "cuda:N" or "cuda:*"')
        if self.gpus is not None and self.device != "cuda":
            raise ValueError(f'gpus = {self.gpus} goes with device = "cuda", not {self.device!r}')
        provider = self.execution_provider
        if provider in NVIDIA_PROVIDERS and not gpu:
            raise ValueError(
                f'execution_provider {provider} runs on an NVIDIA GPU: use device = "cuda:N", '
                '"cuda:*" or "cuda" with gpus'
            )
        if gpu and provider is not None and provider not in NVIDIA_PROVIDERS:
            raise ValueError(
                f"execution_provider {provider} does not run on a CUDA device: use "
                'device = "cpu" (its provider_options choose its hardware) or one of '
                f"{', '.join(NVIDIA_PROVIDERS)}"
            )
        if self.cuda is not None and (not gpu or provider not in (None, CUDA, TENSORRT)):
            raise ValueError(
                "[instances.cuda] sets CUDAExecutionProvider: it needs a cuda device and the "
                "CUDA (default) or TensorRT provider"
            )
        if self.cuda is not None and self.cuda.enable_cuda_graph and provider == TENSORRT:
            raise ValueError(
                "cuda.enable_cuda_graph is CUDAExecutionProvider's; TensorRT has "
                "provider_options = { trt_cuda_graph_enable = true }"
            )
        if self.tensorrt is not None and provider != TENSORRT:
            raise ValueError(f'[instances.tensorrt] needs execution_provider = "{TENSORRT}"')
        if gpu and "device_id" in self.provider_options:
            raise ValueError("provider_options.device_id comes from device; leave it out")
        if self.cuda is not None and provider in (None, CUDA):
            twice = sorted(set(self.provider_options) & set(self.cuda.provider_options()))
            if twice:
                raise ValueError(f"{twice} given in both [instances.cuda] and provider_options")
        return self

    def devices(self, visible_gpus: Callable[[], list[int]]) -> list[str]:
        """The devices this line puts `count` workers on each of; `visible_gpus` is asked
        only for "cuda:*" (an empty list: no GPU is visible)."""
        if self.device == "cuda:*":
            return [f"cuda:{gpu}" for gpu in visible_gpus()]
        if self.device == "cuda":
            return [f"cuda:{gpu}" for gpu in self.gpus or []]
        return [self.device]

    def resolved_threads(self) -> int:
        """Threads per session; by default the cores shared out among this line's workers.

        Measured with load_tests/bench.py (load_tests/report/REPORT.md): one worker with
        every core's threads served compute-bound models close to raw ONNX Runtime's best,
        with markedly lower batch-1 latency than 1-thread workers, whose saturation throughput
        was about the same. Half the cores (the earlier default) left compute-bound models
        markedly slower. Tiny models (digits) are faster on 1 thread: set threads = 1.
        """
        if self.threads is not None:
            return self.threads
        return max(1, available_cores() // self.count)


class ModelConfig(Strict):
    """The whole config.toml; every key is optional."""

    max_batch_size: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    batching: BatchingConfig = BatchingConfig()
    instances: list[InstanceConfig] = Field(default_factory=lambda: [InstanceConfig()])
    version_policy: VersionPolicy = VersionPolicy()
    padding: PaddingConfig | None = None
    tokenizer: TokenizerConfig | None = None
    image: ImageConfig | None = None
    #: Class names per output, one per line in index order (a file in the model's directory):
    #: what Triton's classification extension (`parameters.classification = K`) labels with.
    labels: dict[str, str] = Field(default_factory=dict)
    #: Refuse (400) requests whose floating-point inputs hold NaN or infinity.
    reject_nonfinite: bool = False
    #: The outputs a request that names none gets (default: all of the model's outputs).
    default_outputs: list[str] | None = None
    warmup: WarmupConfig | None = None
    #: false: never profile this model at load (app.repository.autotune); the defaults serve.
    autotune: bool | None = None
    #: Under a memory budget: load at start and never evict (without one, everything is).
    pinned: bool = False

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

    @model_validator(mode="after")
    def _cuda_graphs_need_fixed_batch_sizes(self) -> ModelConfig:
        """A captured CUDA graph replays one shape: batches must come in fixed sizes."""
        graphs = [
            i for i, line in enumerate(self.instances) if line.cuda and line.cuda.enable_cuda_graph
        ]
        if not graphs:
            return self
        key = f"instances.{graphs[0]}.cuda.enable_cuda_graph"
        preferred = self.batching.preferred_batch_sizes
        if not self.max_batch_size or self.max_batch_size not in preferred:
            raise ValueError(
                f"{key} needs fixed batch sizes: set max_batch_size and "
                "batching.preferred_batch_sizes including it (e.g. max_batch_size = 32, "
                "preferred_batch_sizes = [1, 8, 32]); each batch is padded up to the next of "
                f"them (got max_batch_size = {self.max_batch_size}, preferred_batch_sizes = "
                f"{preferred})"
            )
        if self.padding is not None:
            raise ValueError(f"{key} cannot serve [padding] models: their lengths vary")
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
