"""What the repository knows about each model and version: loaded parts and state."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.batching import Batcher
from app.preprocess import TextStage
from app.preprocess.image import ImageStage
from app.repository.config import ModelConfig
from app.runtime import OnnxInstance
from app.tensors import TensorSpec
from app.tuning.result import Tuning

#: The reason an index row gives for a model unloaded on request (Triton's wording).
UNLOADED = "unloaded"
#: The reasons for a model the budget keeps out of memory; a request to it loads it.
NOT_LOADED = "not loaded yet; a request to it loads it"
EVICTED = "unloaded to fit the memory budget; a request to it loads it again"
#: Requests asked of a model count for half as much after this many seconds: demand follows
#: a fleet whose popular models change over minutes, not over a burst.
DEMAND_HALF_LIFE_S = 60.0


@dataclass(slots=True)
class Demand:
    """How much a model is asked for lately: its requests, each counting for less as it
    ages (halved every DEMAND_HALF_LIFE_S). It outlives the model's evictions, so a model
    loaded again is known as the popular one it was."""

    count: float = 0.0
    at: float = 0.0

    def note(self, now: float) -> None:
        self.count, self.at = self.level(now) + 1.0, now

    def level(self, now: float) -> float:
        return float(self.count * 0.5 ** (max(now - self.at, 0.0) / DEMAND_HALF_LIFE_S))


class ModelState(enum.StrEnum):
    """Triton's model states, as the repository index reports them."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class Uses:
    """Requests holding any version, across the process: a load measures its cost alone
    only while none runs (their allocations would count as its own), and a load waiting
    for room is told when a version is let go."""

    started: int = 0
    holding: int = 0
    on_idle: Callable[[], None] | None = None

    def quiet_mark(self) -> tuple[int, int]:
        """Equal before and after a stretch, with nothing holding, when no request ran."""
        return self.started, self.holding


@dataclass(slots=True)
class LoadedVersion:
    """One version ready to serve: its specs, sessions and batcher."""

    model: str
    version: int
    config: ModelConfig
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    instances: list[OnnxInstance]
    batcher: Batcher
    #: Deadline for requests that set none (model config, else server setting).
    default_timeout_s: float | None = None
    #: Refuse NaN/infinite values in floating-point inputs (model config).
    reject_nonfinite: bool = False
    #: The tokenizer step, when clients may send raw text (model config `[tokenizer]`).
    text: TextStage | None = None
    #: The image decoding step, when clients may send encoded images (config `[image]`).
    image: ImageStage | None = None
    #: Class names per output (config `[labels]`), for the classification extension.
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: What a request that names no outputs gets (None: every output).
    default_outputs: tuple[str, ...] | None = None
    #: Where its layout and batch sizes came from (app.repository.autotune).
    tuning: Tuning | None = None
    #: What its load and warm-up added to the memory the process holds (None: unknown).
    memory_bytes: int | None = None
    #: Seconds its warm-up took, of its load.
    warmup_s: float = 0.0
    #: Requests holding it now (from lookup to answer): while any do, it is not evicted.
    users: int = 0
    #: The process's count of them, and whom to tell when the last lets go.
    uses: Uses | None = None
    #: When a request last looked it up (loop time): eviction goes least recent first.
    last_used: float = 0.0
    outputs_by_name: dict[str, TensorSpec] = field(init=False)
    #: What a request may give: the model's inputs, and the text input when there is one.
    request_inputs: tuple[TensorSpec, ...] = field(init=False)
    #: The complete sets of inputs a request may give (empty: all of request_inputs).
    input_sets: tuple[tuple[str, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.outputs_by_name = {spec.name: spec for spec in self.outputs}
        tensors = self.inputs
        if self.max_batch_size > 0:
            # A model input of shape [batch] (a user id, a label) is one value per sample.
            tensors = tuple(
                replace(spec, one_per_sample=True) if len(spec.shape) == 1 else spec
                for spec in tensors
            )
        self.request_inputs, self.input_sets = tensors, ()
        if self.text is not None:
            text = TensorSpec(self.text.input, "BYTES", (-1,), one_per_sample=True)
            self.request_inputs = (text, *tensors)
            self.input_sets = ((text.name,), tuple(spec.name for spec in tensors))
        elif self.image is not None:
            image = TensorSpec(self.image.input, "BYTES", (-1,), opaque=True, one_per_sample=True)
            self.request_inputs = (image, *tensors)
            self.input_sets = ((image.name,), tuple(spec.name for spec in tensors))

    def hold(self, now: float) -> None:
        """A request holds this version from its lookup to its answer."""
        self.users += 1
        self.last_used = now
        if self.uses is not None:
            self.uses.started += 1
            self.uses.holding += 1

    def release(self) -> None:
        self.users -= 1
        uses = self.uses
        if uses is not None:
            uses.holding -= 1
            if not self.users and uses.on_idle is not None:
                uses.on_idle()

    def start(self) -> None:
        self.batcher.start()
        if self.text is not None:
            self.text.batcher.start()

    def begin_drain(self) -> None:
        """Serve what is queued now, without waiting for fuller batches. The model's batcher
        still takes what the stages hand it (texts being tokenized, images being decoded
        when the signal came) until close(), which drains it after them."""
        if self.text is not None:
            self.text.batcher.begin_drain()
        self.batcher.begin_drain()

    async def close(self) -> None:
        """Serve what is queued (texts first: their ids still go to the model), stop the
        threads, then release the sessions: their memory goes now, even while something
        (a late request's frame, a log record) still holds this object."""
        if self.text is not None:
            await self.text.batcher.close()
        if self.image is not None:
            await self.image.close()
        await self.batcher.close()
        for instance in self.instances:
            instance.release()

    def _input_metadata(self, spec: TensorSpec) -> dict[str, Any]:
        """As Triton shows an input: one string, file or value per sample of a batching
        model is [-1, 1] (its config's dims [1] reshaped to []), the shape perf_analyzer
        sends."""
        metadata = spec.metadata()
        if spec.one_per_sample and self.max_batch_size > 0:
            metadata["shape"] = [-1, 1]
        return metadata

    def metadata(self, versions: list[int]) -> dict[str, Any]:
        """The v2 model metadata response (plus the devices and providers really used)."""
        return {
            "name": self.model,
            "versions": [str(v) for v in versions],
            "platform": "onnxruntime_onnx",
            "inputs": [self._input_metadata(spec) for spec in self.request_inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
            "parameters": {
                "max_batch_size": self.max_batch_size,
                "instances": [_instance_metadata(i) for i in self.instances],
                **({"tuning": self.tuning.metadata()} if self.tuning is not None else {}),
                **({"memory_bytes": self.memory_bytes} if self.memory_bytes is not None else {}),
            },
        }

    def describe(self) -> str:
        """`digits v1 [cpu/0 CPUExecutionProvider]`, for the startup log; a worker that fell
        back to the CPU adds what it asked for: `(asked cuda:0)`, or the provider it asked
        for on the CPU (`(asked OpenVINOExecutionProvider)`)."""
        parts = ", ".join(f"{i.label} {'+'.join(i.providers)}{_asked(i)}" for i in self.instances)
        tuning = self.tuning
        said = (
            f" ({tuning.describe()})" if tuning and tuning.source not in ("config", "off") else ""
        )
        return f"{self.model} v{self.version} [{parts}]{said}"


def _asked(instance: OnnxInstance) -> str:
    if not instance.fallback_reason:
        return ""
    if instance.requested != instance.device:
        return f" (asked {instance.requested})"
    return f" (asked {instance.requested_provider})"


def _instance_metadata(instance: OnnxInstance) -> dict[str, Any]:
    """One worker in the model metadata: where it runs and on which providers, what it was
    asked to run on, and why it is not there when it fell back to the CPU."""
    entry: dict[str, Any] = {
        "name": instance.label,
        "device": instance.device,
        "threads": instance.threads,
        "providers": instance.providers,
        "requested_device": instance.requested,
        "requested_provider": instance.requested_provider,
    }
    if instance.fallback_reason:
        entry["fallback_reason"] = instance.fallback_reason
    if instance.fixed_batch_sizes:
        entry["fixed_batch_sizes"] = list(instance.fixed_batch_sizes)
    return entry


@dataclass(slots=True)
class ModelEntry:
    """A model directory: the versions it serves, or why it does not."""

    name: str
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str = ""
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    #: Under a memory budget: loaded when a request asks for it (False once it failed to
    #: load or was unloaded on request, as Triton leaves those until loaded again).
    on_demand: bool = False
    #: Loaded at start and never evicted (config `pinned`, or the server's preload list).
    pinned: bool = False
    #: The load in progress, which every request for the model waits for (single flight).
    loading: asyncio.Task[None] | None = None
    #: What loading it is expected to take at its peak (residency.CostBook.expected).
    expected_bytes: int = 0
    #: How much it is asked for lately, resident or not: eviction keeps what is asked most
    #: per byte it holds.
    demand: Demand = field(default_factory=Demand)
    #: Requests waiting for its load, then for their answers: they hold it once it is in.
    waiters: int = 0

    def latest(self) -> LoadedVersion | None:
        return self.versions[max(self.versions)] if self.versions else None

    @property
    def resident_bytes(self) -> int:
        """What its loaded versions hold (as measured when they loaded)."""
        return sum(v.memory_bytes or 0 for v in self.versions.values())

    @property
    def in_use(self) -> bool:
        """Whether a request holds one of its versions or waits for its load, or a load of
        it is in progress."""
        return (
            self.loading is not None
            or self.waiters > 0
            or any(v.users for v in self.versions.values())
        )

    @property
    def last_used(self) -> float:
        return max((v.last_used for v in self.versions.values()), default=0.0)
