"""Unit tests for app.repository.config: how config.toml is refused. Unknown keys name the
file, the key and the keys allowed there; bad, wrongly typed and conflicting values name the
file and the key; every problem is reported at once; invalid TOML and non-UTF-8 files are
rejected naming the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.errors import ModelLoadError
from app.repository.config import CONFIG_FILE, load_model_config
from tests.config_helpers import write_config


def load_error(model_dir: Path, text: str) -> str:
    """Write `text` as config.toml, load it, and return the ModelLoadError message."""
    path = write_config(model_dir, text)
    with pytest.raises(ModelLoadError) as info:
        load_model_config(model_dir)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_names_file_key_and_allowed_keys(tmp_path: Path) -> None:
    message = load_error(tmp_path, "max_batch_size = 4\nmax_batch = 8\n")

    assert str(tmp_path / CONFIG_FILE) in message
    assert "unknown key 'max_batch'" in message
    allowed = "max_batch_size, batching, instances, version_policy, padding, tokenizer, image, "
    allowed += "labels, reject_nonfinite, default_outputs, warmup, autotune, pinned"
    assert f"(allowed here: {allowed})" in message


def test_unknown_key_in_batching_lists_batching_keys(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[batching]\nmax_delay_ms = 5\n")

    assert "unknown key 'batching.max_delay_ms'" in message
    allowed = (
        "max_queue_delay_ms, preferred_batch_sizes, max_queue_size, max_queue_bytes, "
        "max_queue_samples, latency_target_ms, default_timeout_ms, priority_levels, "
        "default_priority"
    )
    assert f"(allowed here: {allowed})" in message
    assert "max_batch_size" not in message


@pytest.mark.parametrize("index", [0, 1])
def test_unknown_key_in_instances_lists_instance_keys(tmp_path: Path, index: int) -> None:
    entries = ['[[instances]]\ndevice = "cpu"\n'] * 2
    entries[index] += "gpu = 1\n"

    message = load_error(tmp_path, "\n".join(entries))

    assert f"unknown key 'instances.{index}.gpu'" in message
    allowed = "device, gpus, count, threads, execution_provider, provider_options, cuda, "
    allowed += "tensorrt, fallback, spinning, low_load_only"
    assert f"(allowed here: {allowed})" in message


def test_unknown_key_in_version_policy_lists_policy_keys(tmp_path: Path) -> None:
    message = load_error(tmp_path, "version_policy = { newest = 1 }\n")

    assert "unknown key 'version_policy.newest'" in message
    assert "(allowed here: latest, all, specific)" in message


def test_every_problem_is_reported(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'typo = 1\n[batching]\nmax_queue_delay_ms = -1\nfoo = "x"\n')

    assert "unknown key 'typo'" in message
    assert "batching.max_queue_delay_ms" in message
    assert "unknown key 'batching.foo'" in message


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ("[batching]\nmax_queue_delay_ms = -1", "batching.max_queue_delay_ms", "(got -1)"),
        ("[batching]\nmax_queue_delay_ms = 60001", "batching.max_queue_delay_ms", "60000"),
        ("[batching]\nmax_queue_delay_ms = nan", "batching.max_queue_delay_ms", "(got nan)"),
        ('[batching]\nmax_queue_delay_ms = "fast"', "batching.max_queue_delay_ms", "'fast'"),
        ("[batching]\npreferred_batch_sizes = [0]", "batching.preferred_batch_sizes.0", "1"),
        ("[batching]\npreferred_batch_sizes = 4", "batching.preferred_batch_sizes", "list"),
        ("[batching]\nmax_queue_size = 0", "batching.max_queue_size", "(got 0)"),
        ('[[instances]]\ndevice = "tpu"', "instances.0.device", "(got 'tpu')"),
        ('[[instances]]\ndevice = "cuda:"', "instances.0.device", "(got 'cuda:')"),
        ('[[instances]]\ndevice = "cuda:x"', "instances.0.device", "(got 'cuda:x')"),
        ('[[instances]]\ndevice = "CPU"', "instances.0.device", "(got 'CPU')"),
        ("[[instances]]\ncount = 0", "instances.0.count", "(got 0)"),
        ("[[instances]]\ncount = 257", "instances.0.count", "(got 257)"),
        ("[[instances]]\ncount = 1.5", "instances.0.count", "(got 1.5)"),
        ("[[instances]]\nthreads = 0", "instances.0.threads", "(got 0)"),
        ('max_batch_size = "eight"', "max_batch_size", "(got 'eight')"),
        ("max_batch_size = -1", "max_batch_size", "(got -1)"),
        ("max_batch_size = 1000001", "max_batch_size", "(got 1000001)"),
        ("batching = 3", "batching", "(got 3)"),
        ('instances = "cpu"', "instances", "(got 'cpu')"),
        ("version_policy = { latest = 0 }", "version_policy.latest", "(got 0)"),
        ("version_policy = { specific = [0] }", "version_policy.specific.0", "(got 0)"),
        ("version_policy = { all = false }", "version_policy", "'all' can only be true"),
    ],
)
def test_bad_value_names_file_and_key(tmp_path: Path, text: str, key: str, detail: str) -> None:
    message = load_error(tmp_path, text + "\n")

    assert str(tmp_path / CONFIG_FILE) in message
    assert re.search(rf"(^|: |; ){re.escape(key)}: ", message), message
    assert detail in message


def test_bad_value_in_second_instance_names_its_index(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[[instances]]\ncount = 1\n\n[[instances]]\ndevice = "tpu"\n')

    assert "instances.1.device" in message
    assert "instances.0" not in message


def test_empty_instances_list_is_rejected(tmp_path: Path) -> None:
    message = load_error(tmp_path, "instances = []\n")

    assert "instances must list at least one instance" in message


@pytest.mark.parametrize(
    "text",
    ["max_batch_size = ", "[batching\n", "max_batch_size = 1\nmax_batch_size = 2", "a = 'b"],
    ids=["no-value", "unclosed-table", "duplicate-key", "unclosed-string"],
)
def test_invalid_toml_is_rejected_naming_file(tmp_path: Path, text: str) -> None:
    message = load_error(tmp_path, text)

    assert "not valid TOML" in message


def test_non_utf8_config_is_rejected_naming_file(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE
    path.write_bytes(b"max_batch_size = 4 # \xff\xfe\n")

    with pytest.raises(ModelLoadError, match=re.escape(f"{path}: not valid TOML")):
        load_model_config(tmp_path)


@pytest.mark.parametrize(
    ("max_batch_size", "preferred", "too_big"),
    [(4, [2, 8], [8]), (4, [5, 6, 1], [5, 6]), (0, [1], [1])],
)
def test_preferred_batch_sizes_above_max_batch_size_are_rejected(
    tmp_path: Path, max_batch_size: int, preferred: list[int], too_big: list[int]
) -> None:
    text = f"max_batch_size = {max_batch_size}\n[batching]\npreferred_batch_sizes = {preferred}\n"

    message = load_error(tmp_path, text)

    assert (
        f"batching.preferred_batch_sizes {too_big} exceed max_batch_size {max_batch_size}"
    ) in message


@pytest.mark.parametrize(
    ("policy", "chosen"),
    [
        ("latest = 1, all = true", ["latest", "all"]),
        ("latest = 1, specific = [1]", ["latest", "specific"]),
        ("all = true, specific = [1]", ["all", "specific"]),
        ("latest = 2, all = true, specific = [1]", ["latest", "all", "specific"]),
    ],
)
def test_version_policy_with_more_than_one_choice_is_rejected(
    tmp_path: Path, policy: str, chosen: list[str]
) -> None:
    message = load_error(tmp_path, f"version_policy = {{ {policy} }}\n")

    assert f"version_policy: give only one of latest, all, specific (got {chosen})" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('max_batch_size = "8"', "max_batch_size"),
        ("max_batch_size = true", "max_batch_size"),
        ("[batching]\nmax_queue_delay_ms = true", "batching.max_queue_delay_ms"),
        ('[batching]\nmax_queue_delay_ms = "5"', "batching.max_queue_delay_ms"),
        ('[[instances]]\ncount = "2"', "instances.0.count"),
        ('version_policy = { all = "yes" }', "version_policy.all"),
    ],
    ids=["string-int", "bool-int", "bool-float", "string-float", "string-count", "string-bool"],
)
def test_wrongly_typed_value_is_rejected(tmp_path: Path, text: str, key: str) -> None:
    write_config(tmp_path, text + "\n")

    with pytest.raises(ModelLoadError, match=re.escape(key)):
        load_model_config(tmp_path)
