"""Unit tests for app.repository.config: what config.toml loads to. No file, an empty one and
partial sections give the defaults; a full config, every form of version_policy, every
valid device and the bounds of max_batch_size parse; the result is frozen."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.repository.config import (
    BatchingConfig,
    InstanceConfig,
    ModelConfig,
    VersionPolicy,
    load_model_config,
)
from tests.config_helpers import write_config

FULL_CONFIG = """\
max_batch_size = 16

[batching]
max_queue_delay_ms = 2.5
preferred_batch_sizes = [4, 8]
max_queue_size = 100

[[instances]]
device = "cpu"
count = 2
threads = 4

[[instances]]
device = "cuda:1"
count = 3

[version_policy]
latest = 2
"""


def assert_defaults(config: ModelConfig) -> None:
    assert config.max_batch_size is None
    assert config.batching == BatchingConfig(
        max_queue_delay_ms=0.0, preferred_batch_sizes=[], max_queue_size=None
    )
    assert config.instances == [InstanceConfig(device="cpu", count=1, threads=None)]
    assert config.version_policy == VersionPolicy()
    assert config.version_policy.select([1, 2, 3]) == [3]


# --------------------------------------------------------------------------- defaults


def test_no_config_file_gives_defaults(tmp_path: Path) -> None:
    config = load_model_config(tmp_path)

    assert_defaults(config)
    assert config == ModelConfig()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_config_file_gives_defaults(tmp_path: Path, text: str) -> None:
    write_config(tmp_path, text)

    assert_defaults(load_model_config(tmp_path))


def test_defaults_are_not_shared_between_configs() -> None:
    a, b = ModelConfig(), ModelConfig()

    assert a.instances == b.instances
    assert a.instances is not b.instances


# --------------------------------------------------------------------------- valid configs


def test_full_config_parses(tmp_path: Path) -> None:
    write_config(tmp_path, FULL_CONFIG)

    config = load_model_config(tmp_path)

    assert config.max_batch_size == 16
    assert config.batching.max_queue_delay_ms == 2.5
    assert config.batching.preferred_batch_sizes == [4, 8]
    assert config.batching.max_queue_size == 100
    assert config.instances == [
        InstanceConfig(device="cpu", count=2, threads=4),
        InstanceConfig(device="cuda:1", count=3, threads=None),
    ]
    assert config.version_policy.latest == 2
    assert config.version_policy.all is None
    assert config.version_policy.specific is None


@pytest.mark.parametrize(
    ("text", "latest", "all_", "specific"),
    [
        ("version_policy = { latest = 3 }", 3, None, None),
        ("version_policy = { all = true }", None, True, None),
        ("version_policy = { specific = [1, 3] }", None, None, [1, 3]),
        ("[version_policy]\nspecific = [2]", None, None, [2]),
        ("version_policy = {}", None, None, None),
    ],
    ids=["latest", "all", "specific", "specific-table", "empty"],
)
def test_version_policy_forms_parse(
    tmp_path: Path, text: str, latest: int | None, all_: bool | None, specific: list[int] | None
) -> None:
    write_config(tmp_path, text)

    policy = load_model_config(tmp_path).version_policy

    assert (policy.latest, policy.all, policy.specific) == (latest, all_, specific)


@pytest.mark.parametrize("device", ["cpu", "cuda:0", "cuda:1", "cuda:15"])
def test_valid_devices_parse(tmp_path: Path, device: str) -> None:
    write_config(tmp_path, f'[[instances]]\ndevice = "{device}"\n')

    assert load_model_config(tmp_path).instances == [InstanceConfig(device=device)]


def test_partial_sections_keep_other_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, "[batching]\nmax_queue_delay_ms = 5\n\n[[instances]]\ncount = 2\n")

    config = load_model_config(tmp_path)

    assert config.max_batch_size is None
    assert config.batching == BatchingConfig(max_queue_delay_ms=5.0)
    assert config.instances == [InstanceConfig(device="cpu", count=2, threads=None)]
    assert config.version_policy == VersionPolicy()


@pytest.mark.parametrize("max_batch_size", [0, 1, 1_000_000])
def test_max_batch_size_bounds_are_accepted(tmp_path: Path, max_batch_size: int) -> None:
    write_config(tmp_path, f"max_batch_size = {max_batch_size}\n")

    assert load_model_config(tmp_path).max_batch_size == max_batch_size


def test_preferred_batch_sizes_equal_to_max_batch_size_are_accepted(tmp_path: Path) -> None:
    write_config(tmp_path, "max_batch_size = 8\n[batching]\npreferred_batch_sizes = [2, 8]\n")

    assert load_model_config(tmp_path).batching.preferred_batch_sizes == [2, 8]


def test_preferred_batch_sizes_are_not_checked_without_max_batch_size(tmp_path: Path) -> None:
    # max_batch_size may still come from the graph (AUTO_MAX_BATCH_SIZE), so no check here.
    write_config(tmp_path, "[batching]\npreferred_batch_sizes = [64]\n")

    assert load_model_config(tmp_path).batching.preferred_batch_sizes == [64]


def test_config_is_frozen(tmp_path: Path) -> None:
    write_config(tmp_path, FULL_CONFIG)
    config = load_model_config(tmp_path)

    with pytest.raises(ValidationError):
        config.max_batch_size = 4  # type: ignore[misc]
