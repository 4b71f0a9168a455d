"""One ONNX Runtime InferenceSession bound to one device."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.errors import ModelLoadError
from app.runtime.errors import RunFailedError, clean_message
from app.runtime.feeds import repeat_rows, synthetic_inputs
from app.runtime.optimized import create_keeping, open_optimized
from app.runtime.providers import (
    CPU,
    CUDA,
    NVIDIA_PROVIDERS,
    TENSORRT,
    known_providers,
    missing_cuda_libraries,
    package_for,
    parse_cuda_device,
    preload_cuda_libraries,
    provider_chain,
)
from app.tensors import ONNX_TO_V2, TensorSpec, numpy_dtype

log = logging.getLogger(__name__)

#: Runs of each batch size in warm-up when CUDA graphs are on: ONNX Runtime runs a graph
#: normally a few times before it captures it, and the capture must not hit a request.
GRAPH_WARM_UP_RUNS = 3


@dataclass(frozen=True, slots=True)
class InstanceOptions:
    """How one worker's session is made beyond its device and threads (config.toml's
    `[[instances]]` line, resolved by the loader)."""

    #: The provider the instance is for; None: the CPU's on "cpu", CUDA's on "cuda:N".
    provider: str | None = None
    #: Options of that provider (strings, as ONNX Runtime parses them).
    provider_options: Mapping[str, str] = field(default_factory=dict)
    #: CUDAExecutionProvider options, also behind TensorRT.
    cuda_options: Mapping[str, str] = field(default_factory=dict)
    #: Serve on the CPU when the device or provider is missing, instead of failing.
    fallback_cpu: bool = False
    #: The only batch sizes the session runs (CUDA graphs): a batch is padded with copies of
    #: its last row up to the next of them, into buffers bound once; outputs are cut back.
    fixed_batch_sizes: tuple[int, ...] = ()
    #: Run through I/O binding (inputs bound once per batch, outputs bound to host memory);
    #: None: on every device but the CPU, where plain session.run measured fastest.
    io_binding: bool | None = None
    #: Intra-op threads spin between operators instead of sleeping: lower latency for a
    #: lone batch, at the cost of the core time the event loop could have had.
    spinning: bool = False
    #: The batcher gives this worker a batch only while no other worker is computing
    #: (Batcher's `low_load_only`): a session with every core's threads for lone requests.
    low_load_only: bool = False
    #: Where the graph ONNX Runtime optimized for this machine is kept (CPU sessions): read
    #: from there with the optimizer off when it exists, written there when it does not.
    optimized_model: Path | None = None


class _Released:
    """Stands in for a released session: any use says so instead of running."""

    def __getattr__(self, name: str) -> Any:
        raise RunFailedError("this model version was unloaded; its session is released")


_RELEASED: Any = _Released()


class ProviderUnavailableError(ModelLoadError):
    """The device or provider an instance asks for is not usable here (fallback applies)."""


def _session_options(threads: int, spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Off unless asked (or tuned): spinning threads take the core the event loop needs
    # between batches; a tuned model turns it on where it shortens a lone batch. Where on,
    # the threads spin between a run's operators only and stop when the run returns, so
    # that the loop has the cores to answer it and take the next request.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _ort_package() -> str:
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return f"onnxruntime {ort.__version__}"
    return f"{getattr(info, 'package_name', 'onnxruntime')} {ort.__version__}"


class OnnxInstance:
    """A model version's session on one device; implements batching.BatchRunner.

    `device` is what was asked for; with `fallback_cpu` and that device or provider missing,
    the session runs on the CPU instead: `device` and `providers` then say what it got and
    `requested` / `fallback_reason` what was asked and why it was not had.
    """

    def __init__(
        self,
        model_path: Path,
        device: str,
        *,
        threads: int,
        index: int,
        options: InstanceOptions | None = None,
    ) -> None:
        options = options or InstanceOptions()
        self.requested = device
        self.threads = threads
        self.low_load_only = options.low_load_only
        self.fallback_reason: str | None = None
        gpu = parse_cuda_device(device)
        self.requested_provider = options.provider or (CUDA if gpu is not None else CPU)
        try:
            self._session = _open(model_path, device, threads, options, self.requested_provider)
        except ProviderUnavailableError as exc:
            if not options.fallback_cpu:
                raise ProviderUnavailableError(
                    f'{exc}. Use device = "cpu", or fallback = "cpu" to serve on the CPU where '
                    f"{self.requested_provider} is missing"
                ) from exc
            self.fallback_reason = str(exc)
            device, gpu = "cpu", None
            self._session = _open(model_path, "cpu", threads, InstanceOptions(), CPU)
        self.device = device
        self.label = f"{device}/{index}"
        self.providers: list[str] = list(self._session.get_providers())
        self.inputs = graph_tensor_specs(self._session.get_inputs())
        self.outputs = graph_tensor_specs(self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]
        # Where bound buffers live: the GPU's memory, or host memory for the CPU.
        self._bind_device = ("cuda", gpu) if gpu is not None else ("cpu", 0)
        bind = options.io_binding if options.io_binding is not None else device != "cpu"
        # ONNX Runtime binds numeric tensors only: models with strings use session.run.
        strings = any(s.datatype == "BYTES" for s in (*self.inputs, *self.outputs))
        self._io_binding = bind and not strings
        self._fixed: list[_FixedBatch] = []
        if options.fixed_batch_sizes and self.fallback_reason is None:
            check_fixed_shapes(self.inputs, self.outputs)
            self._fixed = [
                _FixedBatch.allocate(self._session, size, i, self.inputs, self.outputs,
                                     self._bind_device, graphs=gpu is not None)
                for i, size in enumerate(sorted(set(options.fixed_batch_sizes)))
            ]  # fmt: skip

    @property
    def shareable(self) -> bool:
        """Whether another worker may run on this session: on the CPU with one thread, a run
        computes on its caller's thread alone, so two workers' runs proceed side by side on
        one copy of the weights as on two sessions."""
        cpu_alone = self.device == "cpu" and self.threads == 1
        return cpu_alone and not self._fixed and not self._io_binding

    def sharing_session(self) -> OnnxInstance:
        """Another worker on this one's session (see `shareable`); labelled by the caller."""
        if not self.shareable:
            raise ValueError(f"worker {self.label}'s session cannot be shared")
        return copy.copy(self)

    def release(self) -> None:
        """Let go of the session and its bound buffers once its batcher has stopped: their
        memory (weights, arena, device buffers) and the session's intra-op threads go at
        once, whatever else still holds this object. A run after this fails."""
        self._fixed = []
        self._session = _RELEASED

    @property
    def fixed_batch_sizes(self) -> tuple[int, ...]:
        return tuple(f.size for f in self._fixed)

    def padded_size(self, samples: int) -> int:
        """The batch size a batch of `samples` really runs at (padding = the difference)."""
        for fixed in self._fixed:
            if fixed.size >= samples:
                return fixed.size
        return samples

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch; ONNX Runtime's failures are RunFailedErrors with its message cleaned."""
        fixed = self._fixed_for(inputs) if self._fixed else None
        try:
            if fixed is not None:
                return fixed.run(self._session, inputs, next(iter(inputs.values())).shape[0])
            if self._io_binding:
                return self._run_bound(inputs)
            results = self._session.run(self._output_names, inputs)
        except Exception as exc:
            raise RunFailedError(clean_message(exc)) from exc
        return dict(zip(self._output_names, results, strict=True))

    def _run_bound(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch through I/O binding: ONNX Runtime copies each input to the device once
        and writes each output into host memory once. A fresh binding per batch, so none
        keeps a batch's arrays (or a stale output shape) alive after it."""
        binding = self._session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, values, strict=True))

    def _fixed_for(self, inputs: dict[str, np.ndarray]) -> _FixedBatch:
        samples = next(iter(inputs.values())).shape[0]
        fixed = next((f for f in self._fixed if f.size >= samples), None)
        if fixed is None:
            raise ValueError(
                f"a batch of {samples} is above the largest fixed batch size {self._fixed[-1].size}"
            )
        return fixed

    def warm_up(
        self,
        batch_sizes: Iterable[int],
        batches: bool,
        sample: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Run once per batch size so first requests don't pay for lazy init (CUDA graphs:
        each fixed size a few times, so its graph is captured before traffic). On `sample`
        (rows repeated to each size), else on synthetic inputs: zeros, and strings "0" (a
        graph that casts its strings to numbers parses them)."""
        sizes = list(batch_sizes)
        repeats = 1
        if self._fixed:
            sizes, repeats = list(self.fixed_batch_sizes), GRAPH_WARM_UP_RUNS
        for size in sizes:
            rows = size if batches else None
            feeds = (
                synthetic_inputs(self.inputs, rows) if sample is None else repeat_rows(sample, rows)
            )
            for _ in range(repeats):
                self.run(feeds)


def _open(
    model_path: Path, device: str, threads: int, options: InstanceOptions, provider: str
) -> ort.InferenceSession:
    """A session with `provider` first; ProviderUnavailableError when this build lacks it
    or the session did not get it (ONNX Runtime then falls back to the CPU, only logging)."""
    available = ort.get_available_providers()
    if provider not in available:
        if provider not in known_providers():
            reason = f"{provider}, which ONNX Runtime does not know (known: {known_providers()})"
        else:
            reason = (
                f"{provider}, which this onnxruntime build ({_ort_package()}) does not include "
                f"(it has: {available}); {provider} comes with {package_for(provider)}"
            )
        raise ProviderUnavailableError(f"device {device} asked for {reason}")
    if provider in NVIDIA_PROVIDERS:
        preload_cuda_libraries()
    chain = provider_chain(device, provider, options.provider_options, options.cuda_options)
    kept = options.optimized_model if provider == CPU else None
    if kept is not None:
        session = open_optimized(kept, _session_options(threads, options.spinning), chain)
        if session is not None:
            return session
    try:
        session = create_keeping(
            model_path, lambda: _session_options(threads, options.spinning), chain, kept
        )
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        if provider != CPU:
            # Maybe the provider's fault (a bad option, out of GPU memory): fallback applies;
            # the CPU session made then fails in turn if the graph itself is bad.
            raise ProviderUnavailableError(
                f"device {device}: ONNX Runtime could not create a {provider} session for "
                f"{model_path}: {exc}"
            ) from exc
        raise ModelLoadError(f"ONNX Runtime could not load {model_path}: {exc}") from exc
    got = session.get_providers()
    if provider not in got:
        hint = ""
        if provider in NVIDIA_PROVIDERS:
            missing = missing_cuda_libraries(tensorrt=provider == TENSORRT)
            hint = (
                f"; missing here: {', '.join(missing)}"
                if missing
                else "; the CUDA libraries load, so the GPU itself is missing or refused "
                "(ONNX Runtime's log says why)"
            )
        raise ProviderUnavailableError(
            f"device {device} asked for {provider} but the session got {got} (available "
            f"here: {available}){hint}. {provider} needs {package_for(provider)}"
        )
    return session


def check_fixed_shapes(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Fixed batch sizes (CUDA graphs) bind buffers once: every tensor needs a batch axis
    and fixed other dims, and a numeric type (strings cannot live on a GPU)."""
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if spec.datatype == "BYTES":
                raise ModelLoadError(
                    f"CUDA graphs need numeric tensors; {kind} '{spec.name}' is BYTES"
                )
            if not spec.shape or any(d < 0 for d in spec.shape[1:]):
                raise ModelLoadError(
                    f"CUDA graphs replay fixed shapes, but {kind} '{spec.name}' has shape "
                    f"{list(spec.shape)}: only the first (batch) axis may vary"
                )


@dataclass(slots=True)
class _FixedBatch:
    """Buffers and binding of one fixed batch size, bound once; with CUDA graphs, run as
    graph `graph_id`."""

    size: int
    binding: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    run_options: ort.RunOptions

    @classmethod
    def allocate(
        cls,
        session: ort.InferenceSession,
        size: int,
        graph_id: int,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: tuple[str, int],
        graphs: bool,
    ) -> _FixedBatch:
        def buffer(spec: TensorSpec) -> Any:
            shape = [size, *spec.shape[1:]]
            dtype = numpy_dtype(spec.datatype)
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, *device)

        binding = session.io_binding()
        bound_inputs = {spec.name: buffer(spec) for spec in inputs}
        bound_outputs = {spec.name: buffer(spec) for spec in outputs}
        for name, value in bound_inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in bound_outputs.items():
            binding.bind_ortvalue_output(name, value)
        run_options = ort.RunOptions()
        if graphs:
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return cls(size, binding, bound_inputs, bound_outputs, run_options)

    def run(
        self, session: ort.InferenceSession, inputs: Mapping[str, np.ndarray], samples: int
    ) -> dict[str, np.ndarray]:
        for name, array in inputs.items():
            self.inputs[name].update_inplace(pad_rows(array, self.size))
        session.run_with_iobinding(self.binding, self.run_options)
        # numpy() is a view of a host buffer (or a fresh copy of a GPU one): copy the rows
        # out before the next batch overwrites the buffer.
        return {name: np.array(value.numpy()[:samples]) for name, value in self.outputs.items()}


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with copies of its last row appended up to `size` rows (contiguous): real
    values, so padding never feeds a model zeros it would divide by."""
    missing = size - array.shape[0]
    if missing <= 0:
        return np.ascontiguousarray(array)
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


def graph_tensor_specs(args: Sequence[Any]) -> tuple[TensorSpec, ...]:
    """TensorSpecs from ORT NodeArgs: named or unknown dims become -1 (variable)."""
    specs = []
    for arg in args:
        datatype = ONNX_TO_V2.get(arg.type)
        if datatype is None:
            raise ModelLoadError(f"tensor '{arg.name}' has type {arg.type}, which is not supported")
        shape = arg.shape or []
        specs.append(
            TensorSpec(
                name=arg.name,
                datatype=datatype,
                shape=tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape),
                dim_names=tuple(d if isinstance(d, str) else None for d in shape),
            )
        )
    return tuple(specs)
