"""`[[instances]]` on GPUs and other providers: the config's forms, its error messages, and
what the loader makes of a line (devices, provider options, TensorRT caches, fallback).

Everything here runs without a GPU: lines that need one are checked as config, and the
sessions made from them (tests at the end) either fail saying what is missing or, with
`fallback = "cpu"`, run on the CPU. tests/gpu has the same on a real GPU.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.errors import ModelLoadError
from app.repository.config import (
    CONFIG_FILE,
    CudaConfig,
    InstanceConfig,
    ModelConfig,
    TensorrtConfig,
    load_model_config,
)
from app.repository.instances import build_instances, instance_options, tensorrt_cache_dir
from app.runtime.providers import CUDA, TENSORRT
from tests.conftest import DIGITS_ONNX


def load(model_dir: Path, text: str) -> ModelConfig:
    (model_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    return load_model_config(model_dir)


def load_error(model_dir: Path, text: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        load(model_dir, text)
    return str(info.value)


def cuda_works() -> bool:
    """Whether a session on cuda:0 really gets CUDA here (this build lists it regardless)."""
    if CUDA not in ort.get_available_providers():
        return False
    session = ort.InferenceSession(
        str(DIGITS_ONNX), providers=[(CUDA, {"device_id": "0"}), "CPUExecutionProvider"]
    )
    return CUDA in session.get_providers()


# --------------------------------------------------------------------------- valid forms


def test_a_gpu_line_with_cuda_and_tensorrt_tables_parses(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
max_batch_size = 32
[batching]
preferred_batch_sizes = [1, 8, 32]

[[instances]]
device = "cuda:*"
count = 2
fallback = "cpu"
[instances.cuda]
gpu_mem_limit = 8_589_934_592
arena_extend_strategy = "kSameAsRequested"
cudnn_conv_algo_search = "HEURISTIC"
do_copy_in_default_stream = true
enable_cuda_graph = true

[[instances]]
device = "cuda"
gpus = [0, 2]
execution_provider = "TensorrtExecutionProvider"
provider_options = { trt_cuda_graph_enable = true, trt_max_partition_iterations = 10 }
tensorrt = { fp16 = true, engine_cache = true, engine_cache_dir = "trt-cache" }

[[instances]]
device = "cpu"
execution_provider = "OpenVINOExecutionProvider"
provider_options = { device_type = "GPU", num_streams = 2, enable_qdq_optimizer = false }
""",
    )
    graphs, trt, openvino = config.instances
    assert (graphs.device, graphs.count, graphs.fallback) == ("cuda:*", 2, "cpu")
    assert graphs.cuda == CudaConfig(
        gpu_mem_limit=8_589_934_592,
        arena_extend_strategy="kSameAsRequested",
        cudnn_conv_algo_search="HEURISTIC",
        do_copy_in_default_stream=True,
        enable_cuda_graph=True,
    )
    assert (trt.device, trt.gpus, trt.execution_provider) == ("cuda", [0, 2], TENSORRT)
    assert trt.tensorrt == TensorrtConfig(
        fp16=True, engine_cache=True, engine_cache_dir="trt-cache"
    )
    assert openvino.provider_options == {
        "device_type": "GPU",
        "num_streams": 2,
        "enable_qdq_optimizer": False,
    }


def test_devices_expand_per_gpu_and_ask_for_visible_gpus_only_for_cuda_star() -> None:
    def no_call() -> list[int]:
        raise AssertionError("visible GPUs asked for a line that names its devices")

    assert InstanceConfig(device="cpu").devices(no_call) == ["cpu"]
    assert InstanceConfig(device="cuda:3").devices(no_call) == ["cuda:3"]
    assert InstanceConfig(device="cuda", gpus=[0, 2]).devices(no_call) == ["cuda:0", "cuda:2"]
    assert InstanceConfig(device="cuda:*").devices(lambda: [0, 1]) == ["cuda:0", "cuda:1"]
    assert InstanceConfig(device="cuda:*").devices(lambda: []) == []


# --------------------------------------------------------------------------- bad lines


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('device = "cuda"', ['device = "cuda" needs gpus = [..]']),
        ('device = "cuda:0"\ngpus = [0]', ['gpus = [0] goes with device = "cuda"']),
        ('device = "cuda"\ngpus = []', ["instances.0.gpus", "each once"]),
        ('device = "cuda"\ngpus = [1, 1]', ["instances.0.gpus", "each once"]),
        ('device = "cuda"\ngpus = [-1]', ["instances.0.gpus.0", "(got -1)"]),
        ('device = "gpu:0"', ["instances.0.device", '"cuda:*" (every visible GPU)']),
        (
            'execution_provider = "FooExecutionProvider"',
            ["instances.0.execution_provider", "unknown execution provider", "OpenVINO"],
        ),
        (
            'execution_provider = "TensorrtExecutionProvider"',
            ["TensorrtExecutionProvider runs on an NVIDIA GPU"],
        ),
        (
            'device = "cuda:0"\nexecution_provider = "OpenVINOExecutionProvider"',
            ["OpenVINOExecutionProvider does not run on a CUDA device"],
        ),
        ("cuda = { use_tf32 = false }", ["[instances.cuda]", "needs a cuda device"]),
        ('device = "cuda:0"\ntensorrt = { fp16 = true }', ["needs execution_provider"]),
        (
            'device = "cuda:0"\ncuda = { arena_extend_strategy = "grow" }',
            ["instances.0.cuda.arena_extend_strategy", "'kNextPowerOfTwo'", "(got 'grow')"],
        ),
        (
            'device = "cuda:0"\ncuda = { cudnn_conv_algo_search = "FAST" }',
            ["instances.0.cuda.cudnn_conv_algo_search", "'EXHAUSTIVE'", "(got 'FAST')"],
        ),
        (
            'device = "cuda:0"\ncuda = { gpu_mem_limit = "8GB" }',
            ["instances.0.cuda.gpu_mem_limit", "(got '8GB')"],
        ),
        (
            'device = "cuda:0"\ncuda = { gpu_mem_limit = 0 }',
            ["instances.0.cuda.gpu_mem_limit", "(got 0)"],
        ),
        (
            'device = "cuda:0"\ncuda = { do_copy_in_default_stream = 1 }',
            ["instances.0.cuda.do_copy_in_default_stream", "(got 1)"],
        ),
        (
            'device = "cuda:0"\ncuda = { arena = "x" }',
            ["unknown key 'instances.0.cuda.arena'", "(allowed here: gpu_mem_limit,"],
        ),
        (
            'device = "cuda:0"\nexecution_provider = "TensorrtExecutionProvider"\n'
            "tensorrt = { fp32 = true }",
            ["unknown key 'instances.0.tensorrt.fp32'", "(allowed here: fp16, int8,"],
        ),
        (
            'device = "cuda:0"\nexecution_provider = "TensorrtExecutionProvider"\n'
            'tensorrt = { engine_cache_dir = "/tmp/x" }',
            ["engine_cache_dir is only used with engine_cache = true"],
        ),
        (
            'device = "cuda:0"\nexecution_provider = "TensorrtExecutionProvider"\n'
            "tensorrt = { builder_optimization_level = 6 }",
            ["instances.0.tensorrt.builder_optimization_level", "(got 6)"],
        ),
        (
            'device = "cuda:0"\nexecution_provider = "TensorrtExecutionProvider"\n'
            "cuda = { enable_cuda_graph = true }",
            ["enable_cuda_graph is CUDAExecutionProvider's", "trt_cuda_graph_enable"],
        ),
        (
            "provider_options = { nested = { a = 1 } }",
            ["instances.0.provider_options.nested"],
        ),
        (
            'device = "cuda:1"\nprovider_options = { device_id = 0 }',
            ["provider_options.device_id comes from device"],
        ),
        (
            'device = "cuda:0"\nprovider_options = { use_tf32 = 0 }\ncuda = { use_tf32 = false }',
            ["['use_tf32'] given in both [instances.cuda] and provider_options"],
        ),
        ('fallback = "gpu"', ["instances.0.fallback", "'cpu'", "(got 'gpu')"]),
        ("fallback = true", ["instances.0.fallback", "(got True)"]),
    ],
)
def test_a_bad_instance_line_names_its_key_and_what_is_allowed(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    message = load_error(tmp_path, f"[[instances]]\n{text}\n")

    assert message.startswith(f"{tmp_path / CONFIG_FILE}: "), message
    assert "instances.0" in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "got max_batch_size = None, preferred_batch_sizes = []"),
        ("max_batch_size = 8\n", "got max_batch_size = 8, preferred_batch_sizes = []"),
        (
            "max_batch_size = 8\n[batching]\npreferred_batch_sizes = [2, 4]\n",
            "got max_batch_size = 8, preferred_batch_sizes = [2, 4]",
        ),
        (
            "max_batch_size = 8\n[batching]\npreferred_batch_sizes = [8]\n"
            "[padding]\ninputs = { input = 0 }\n",
            "cannot serve [padding] models",
        ),
    ],
)
def test_cuda_graphs_need_fixed_batch_sizes(tmp_path: Path, text: str, fragment: str) -> None:
    message = load_error(
        tmp_path,
        text + '[[instances]]\ndevice = "cuda:0"\ncuda = { enable_cuda_graph = true }\n',
    )

    assert "instances.0.cuda.enable_cuda_graph" in message
    assert fragment in message


# --------------------------------------------------------------------------- resolved options


def test_options_reach_onnx_runtime_as_strings_with_fixed_sizes_for_cuda_graphs(
    tmp_path: Path,
) -> None:
    config = load(
        tmp_path,
        """
max_batch_size = 16
[batching]
preferred_batch_sizes = [16, 1, 4]
[[instances]]
device = "cuda:1"
fallback = "cpu"
provider_options = { tunable_op_enable = true, prefer_nhwc = 0 }
cuda = { gpu_mem_limit = 1024, use_tf32 = false, enable_cuda_graph = true }
""",
    )

    options = instance_options(config.instances[0], 0, "m", 1, tmp_path, config)

    assert options.provider is None
    assert dict(options.provider_options) == {"tunable_op_enable": "true", "prefer_nhwc": "0"}
    # use_tf32 = false is a setting (TF32 off), not an absence: it must reach the provider.
    assert dict(options.cuda_options) == {
        "gpu_mem_limit": "1024",
        "use_tf32": "false",
        "enable_cuda_graph": "true",
    }
    assert options.fallback_cpu
    assert sorted(options.fixed_batch_sizes) == [1, 4, 16]


def test_tensorrt_options_and_a_relative_cache_dir_inside_the_model_directory(
    tmp_path: Path,
) -> None:
    line = InstanceConfig(
        device="cuda:0",
        execution_provider=TENSORRT,
        tensorrt=TensorrtConfig(fp16=True, engine_cache=True, engine_cache_dir="cache/trt"),
        provider_options={"trt_max_partition_iterations": 10},
    )
    config = ModelConfig(instances=[line])

    options = instance_options(line, 0, "m", 3, tmp_path, config)

    assert options.provider == TENSORRT
    assert dict(options.provider_options) == {
        "trt_fp16_enable": "true",
        "trt_int8_enable": "false",
        "trt_engine_cache_enable": "true",
        "trt_timing_cache_enable": "false",
        "trt_engine_cache_path": str(tmp_path / "cache" / "trt"),
        "trt_max_partition_iterations": "10",
    }
    assert (tmp_path / "cache" / "trt").is_dir()


def test_the_default_tensorrt_cache_is_one_folder_per_model_version(tmp_path: Path) -> None:
    path = tensorrt_cache_dir(TensorrtConfig(timing_cache=True), 0, "model-x", 7, tmp_path)

    assert path is not None and path.is_dir()
    assert path.parts[-3:] == ("batchserve-tensorrt", "model-x", "7")
    assert tensorrt_cache_dir(TensorrtConfig(fp16=True), 0, "model-x", 7, tmp_path) is None


def test_a_tensorrt_cache_dir_that_cannot_be_made_fails_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    settings = TensorrtConfig(engine_cache=True, engine_cache_dir="a-file/cache")

    with pytest.raises(ModelLoadError, match=r"instances\.2\.tensorrt\.engine_cache_dir: cannot"):
        tensorrt_cache_dir(settings, 2, "m", 1, tmp_path)


# --------------------------------------------------------------------------- sessions made


def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(DIGITS_ONNX.read_bytes())
    return path


def test_cuda_star_without_a_gpu_fails_unless_fallback_allows_the_cpu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = model_path(tmp_path)
    strict = ModelConfig(instances=[InstanceConfig(device="cuda:*", count=2, threads=1)])
    with pytest.raises(ModelLoadError, match=r'instances\.0: device = "cuda:\*" found no GPU'):
        build_instances("m", 1, path, strict, gpus=lambda: [])

    lenient = ModelConfig(
        instances=[
            InstanceConfig(device="cpu", threads=1),
            InstanceConfig(device="cuda:*", count=2, threads=1, fallback="cpu"),
        ]
    )
    with caplog.at_level(logging.WARNING):
        instances = build_instances("m", 1, path, lenient, gpus=lambda: [])

    assert [(i.label, i.device, i.requested) for i in instances] == [
        ("cpu/0", "cpu", "cpu"),
        ("cpu/1", "cpu", "cuda:*"),
        ("cpu/2", "cpu", "cuda:*"),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        'model m v1: cpu/1, cpu/2 run on the CPU instead of cuda:*, as fallback = "cpu" allows: '
        'device = "cuda:*" found no GPU here (NVML counts none; is the NVIDIA driver installed '
        "and the GPU passed to this container?)"
    ]


def test_cuda_0_on_a_machine_without_cuda_fails_or_falls_back_as_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if cuda_works():
        pytest.skip("CUDA works here: tests/gpu covers cuda:0")
    path = model_path(tmp_path)
    strict = ModelConfig(instances=[InstanceConfig(device="cuda:0", threads=1)])
    with pytest.raises(ModelLoadError) as info:
        build_instances("m", 1, path, strict)
    assert re.search(r"device cuda:0 asked for CUDAExecutionProvider", str(info.value))

    lenient = ModelConfig(instances=[InstanceConfig(device="cuda:0", threads=1, fallback="cpu")])
    with caplog.at_level(logging.WARNING):
        (instance,) = build_instances("m", 1, path, lenient)

    assert (instance.label, instance.device, instance.requested) == ("cpu/0", "cpu", "cuda:0")
    assert instance.providers == ["CPUExecutionProvider"]
    assert instance.fallback_reason is not None and "CUDAExecutionProvider" in str(
        instance.fallback_reason
    )
    x = np.zeros((2, 64), dtype=np.float32)
    assert instance.run({"input": x})["probabilities"].shape == (2, 10)
    assert any(
        r.getMessage().startswith("model m v1: cpu/0 runs on the CPU instead of cuda:0")
        for r in caplog.records
    )
