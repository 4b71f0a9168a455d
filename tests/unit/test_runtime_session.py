"""app.runtime on the CPU: the GPU workers' code paths that ONNX Runtime lets run on the CPU
(I/O binding, buffers bound once per fixed batch size with padding) give exactly what
session.run gives, and a provider that is missing fails saying which package brings it.

The CUDA provider itself is exercised in tests/gpu, which skips without a GPU.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.batching import Batcher, BatchingPolicy, BatchObserver, BatchReport
from app.errors import ModelLoadError
from app.runtime import InstanceOptions, OnnxInstance
from app.runtime.errors import clean_message
from app.runtime.providers import (
    CPU,
    CUDA,
    TENSORRT,
    package_for,
    provider_chain,
    to_option_strings,
    visible_gpus,
)
from app.runtime.session import ProviderUnavailableError, check_fixed_shapes, pad_rows
from app.tensors import TensorSpec
from testing.synthetic_models import write_text_identity_model, write_token_model
from tests.conftest import DIGITS_ONNX


@pytest.fixture(scope="module")
def digits_rows() -> np.ndarray:
    return np.load(DIGITS_ONNX.parents[1] / "data" / "test_x.npy")


@pytest.fixture(scope="module")
def reference() -> ort.InferenceSession:
    return ort.InferenceSession(str(DIGITS_ONNX), providers=[CPU])


def session_run(session: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# --------------------------------------------------------------------------- I/O binding


def test_io_binding_gives_exactly_what_session_run_gives(
    digits_rows: np.ndarray, reference: ort.InferenceSession
) -> None:
    bound = OnnxInstance(
        DIGITS_ONNX, "cpu", threads=1, index=0, options=InstanceOptions(io_binding=True)
    )
    plain = OnnxInstance(DIGITS_ONNX, "cpu", threads=1, index=0)
    assert bound._io_binding and not plain._io_binding  # CPU keeps session.run by default

    # Changing batch sizes from one run to the next: no output shape is kept between runs.
    start = 0
    for n in (1, 7, 3, 64, 2, 1):
        x = digits_rows[start : start + n]
        start += n
        assert_same(bound.run({"input": x}), session_run(reference, x))
        assert_same(plain.run({"input": x}), session_run(reference, x))


def test_io_binding_takes_non_contiguous_inputs(
    digits_rows: np.ndarray, reference: ort.InferenceSession
) -> None:
    bound = OnnxInstance(
        DIGITS_ONNX, "cpu", threads=1, index=0, options=InstanceOptions(io_binding=True)
    )
    x = digits_rows[:20:2]  # a strided view, as a slice of a larger request could be
    assert not x.flags.c_contiguous

    assert_same(bound.run({"input": x}), session_run(reference, np.ascontiguousarray(x)))


def test_string_models_run_without_binding_which_onnx_runtime_refuses_for_strings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "text.onnx"
    write_text_identity_model(path)
    instance = OnnxInstance(
        path, "cpu", threads=1, index=0, options=InstanceOptions(io_binding=True)
    )

    out = instance.run({"text": np.array(["a", "bc"], dtype=object)})

    assert out["echo"].tolist() == ["a", "bc"]


# --------------------------------------------------------------------------- fixed sizes


def test_fixed_batch_sizes_pad_each_batch_up_and_cut_the_outputs_back(
    digits_rows: np.ndarray, reference: ort.InferenceSession
) -> None:
    instance = OnnxInstance(
        DIGITS_ONNX, "cpu", threads=1, index=0, options=InstanceOptions(fixed_batch_sizes=(8, 2))
    )
    assert instance.fixed_batch_sizes == (2, 8)
    assert [instance.padded_size(n) for n in (1, 2, 3, 8)] == [2, 2, 8, 8]
    instance.warm_up([8], batches=True)

    start = 0
    outputs = []
    for n in (3, 1, 8, 2, 5):
        x = digits_rows[start : start + n]
        start += n
        got = instance.run({"input": x})
        assert_same(got, session_run(reference, x))
        outputs.append(got)
    # Results are copies: the next batch reuses the buffers without changing them.
    assert_same(outputs[0], session_run(reference, digits_rows[:3]))


def test_a_batch_above_the_largest_fixed_size_is_refused(digits_rows: np.ndarray) -> None:
    instance = OnnxInstance(
        DIGITS_ONNX, "cpu", threads=1, index=0, options=InstanceOptions(fixed_batch_sizes=(4,))
    )

    with pytest.raises(ValueError, match="above the largest fixed batch size 4"):
        instance.run({"input": digits_rows[:5]})


def test_padding_repeats_the_last_row() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)

    padded = pad_rows(x, 5)

    assert padded.tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_rows(x, 3) is x


def test_fixed_sizes_are_refused_for_tensors_that_are_not_fixed_besides_the_batch(
    tmp_path: Path,
) -> None:
    tokens, text = tmp_path / "tokens.onnx", tmp_path / "text.onnx"
    write_token_model(tokens)
    write_text_identity_model(text)

    with pytest.raises(ModelLoadError, match=r"input 'input_ids' has shape \[-1, -1\]"):
        OnnxInstance(
            tokens, "cpu", threads=1, index=0, options=InstanceOptions(fixed_batch_sizes=(4,))
        )
    with pytest.raises(ModelLoadError, match="input 'text' is BYTES"):
        OnnxInstance(
            text, "cpu", threads=1, index=0, options=InstanceOptions(fixed_batch_sizes=(4,))
        )
    with pytest.raises(ModelLoadError, match="output 'y' has shape"):
        check_fixed_shapes([TensorSpec("x", "FP32", (-1, 3))], [TensorSpec("y", "FP32", (-1, -1))])


# --------------------------------------------------------------------------- providers


@pytest.mark.parametrize(
    ("provider", "package"),
    [
        ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
        ("DmlExecutionProvider", "onnxruntime-directml"),
        ("CoreMLExecutionProvider", "onnxruntime on macOS"),
        ("MIGraphXExecutionProvider", "onnxruntime-migraphx"),
    ],
)
def test_a_provider_this_build_lacks_fails_naming_the_package_that_brings_it(
    provider: str, package: str
) -> None:
    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is in this build")

    with pytest.raises(ProviderUnavailableError) as info:
        OnnxInstance(
            DIGITS_ONNX, "cpu", threads=1, index=0, options=InstanceOptions(provider=provider)
        )

    message = str(info.value)
    assert f"device cpu asked for {provider}, which this onnxruntime build" in message
    assert f"comes with {package}" in message
    assert str(ort.get_available_providers()) in message


def test_a_provider_onnx_runtime_does_not_know_is_named_with_the_known_ones() -> None:
    with pytest.raises(ProviderUnavailableError, match=r"does not know .*OpenVINO"):
        OnnxInstance(
            DIGITS_ONNX,
            "cpu",
            threads=1,
            index=0,
            options=InstanceOptions(provider="NopeExecutionProvider"),
        )


def test_a_missing_provider_falls_back_to_the_cpu_when_allowed(
    digits_rows: np.ndarray, reference: ort.InferenceSession
) -> None:
    provider = "OpenVINOExecutionProvider"
    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is in this build")
    options = InstanceOptions(provider=provider, fallback_cpu=True)

    instance = OnnxInstance(DIGITS_ONNX, "cpu", threads=1, index=3, options=options)

    assert (instance.device, instance.label, instance.providers) == ("cpu", "cpu/3", [CPU])
    assert (instance.requested, instance.requested_provider) == ("cpu", provider)
    assert "onnxruntime-openvino" in str(instance.fallback_reason)
    assert_same(instance.run({"input": digits_rows[:4]}), session_run(reference, digits_rows[:4]))


def test_a_bad_graph_is_not_mistaken_for_a_missing_provider(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx graph")

    with pytest.raises(ModelLoadError, match="ONNX Runtime could not load") as info:
        OnnxInstance(
            broken, "cuda:0", threads=1, index=0, options=InstanceOptions(fallback_cpu=True)
        )
    assert not isinstance(info.value, ProviderUnavailableError)


def test_the_nvidia_providers_name_their_libraries() -> None:
    assert "cuDNN 9" in package_for(CUDA)
    assert "{cuda}" not in package_for(CUDA)
    assert "libnvinfer" in package_for(TENSORRT)


def test_provider_chains_put_the_gpu_first_and_the_cpu_last() -> None:
    cuda_opts = {"gpu_mem_limit": "1024"}
    assert provider_chain("cpu", None, {}, {}) == [(CPU, {})]
    assert provider_chain("cpu", "OpenVINOExecutionProvider", {"device_type": "GPU"}, {}) == [
        ("OpenVINOExecutionProvider", {"device_type": "GPU"}),
        (CPU, {}),
    ]
    assert provider_chain("cuda:2", None, {"tunable_op_enable": "1"}, cuda_opts) == [
        (CUDA, {"device_id": "2", "gpu_mem_limit": "1024", "tunable_op_enable": "1"}),
        (CPU, {}),
    ]
    assert provider_chain("cuda:1", TENSORRT, {"trt_fp16_enable": "true"}, cuda_opts) == [
        (TENSORRT, {"device_id": "1", "trt_fp16_enable": "true"}),
        (CUDA, {"device_id": "1", "gpu_mem_limit": "1024"}),
        (CPU, {}),
    ]


def test_options_become_strings_every_provider_parses() -> None:
    assert to_option_strings({"a": True, "b": False, "c": 3, "d": 0.5, "e": "x"}) == {
        "a": "true",
        "b": "false",
        "c": "3",
        "d": "0.5",
        "e": "x",
    }


@pytest.mark.parametrize(
    ("listed", "expected"),
    [("", []), ("-1", []), ("GPU-1a2b,GPU-3c4d", [0, 1]), ("GPU-1a2b,junk,GPU-3c4d", [0])],
)
def test_cuda_visible_devices_decides_which_gpus_cuda_star_means(
    monkeypatch: pytest.MonkeyPatch, listed: str, expected: list[int]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)

    assert visible_gpus() == expected


def test_the_batcher_reports_the_rows_a_fixed_size_runner_pads(
    digits_rows: np.ndarray, reference: ort.InferenceSession
) -> None:
    class Reports(BatchObserver):
        def __init__(self) -> None:
            self.padding: list[tuple[int, int]] = []

        def batch_executed(self, report: BatchReport) -> None:
            self.padding.append((report.samples, report.padding))

    instance = OnnxInstance(
        DIGITS_ONNX, "cpu", threads=1, index=0, options=InstanceOptions(fixed_batch_sizes=(4, 8))
    )
    reports = Reports()

    async def scenario() -> list[dict[str, np.ndarray]]:
        batcher = Batcher("m/1", BatchingPolicy(max_batch_size=8, max_queue_size=10), [instance],
                          observer=reports)  # fmt: skip
        batcher.start()
        results = [await batcher.infer({"input": digits_rows[:n]}) for n in (3, 5, 8, 1)]
        await batcher.close()
        return results

    results = asyncio.run(scenario())

    assert reports.padding == [(3, 1), (5, 3), (8, 0), (1, 3)]
    for n, got in zip((3, 5, 8, 1), results, strict=True):
        assert_same(got, session_run(reference, digits_rows[:n]))


def test_runtime_messages_lose_source_paths() -> None:
    raw = RuntimeError(
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while "
        "running Gather node. Name:'g' Status Message: /onnxruntime_src/onnxruntime/core/"
        "providers/cpu/tensor/gather.cc:154 indices element out of data bounds, idx=50"
    )
    message = clean_message(raw)
    assert "onnxruntime_src" not in message and "[ONNXRuntimeError]" not in message
    assert "indices element out of data bounds, idx=50" in message
