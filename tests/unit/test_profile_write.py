"""`batchserve profile --write`: the recommendation goes into config.toml and everything
else (comments, other keys, other devices' instances) stays."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from app.profile.errors import ProfileError
from app.profile.write import MARK, apply, write_config
from app.repository.config import ModelConfig, load_model_config
from app.tuning.plan import Plan
from app.tuning.points import Layout
from tests.conftest import MODELS


def recommendation(
    layout: Layout | None = None,
    max_batch_size: int | None = 128,
    preferred: tuple[int, ...] = (64,),
) -> Plan:
    return Plan(
        target_ms=5.0,
        target_source="given",
        layout=layout or Layout(2, 1),
        max_batch_size=max_batch_size,
        batch_size=max(preferred, default=max_batch_size),
        preferred_batch_sizes=list(preferred),
        throughput_sps=1000.0,
        latency_ms_p50=1.0,
        meets_target=True,
    )


def test_the_digits_config_keeps_its_comments_and_other_keys() -> None:
    original = (MODELS / "digits" / "config.toml").read_text()
    written = apply(original, recommendation(), "cpu")
    comments = [line for line in original.splitlines() if line.lstrip().startswith("#")]
    assert all(line in written.splitlines() for line in comments)
    config = tomllib.loads(written)
    before = tomllib.loads(original)
    assert config["max_batch_size"] == 128
    assert config["batching"] == {**before["batching"], "preferred_batch_sizes": [64]}
    assert config["instances"] == [{"device": "cpu", "count": 2, "threads": 1}]
    assert config["version_policy"] == before["version_policy"]
    # Replaced keys stay where they were; the new key follows the table's last key, ahead
    # of the comment that introduces [[instances]].
    lines = written.splitlines()
    assert lines.index("max_batch_size = 128") == original.splitlines().index("max_batch_size = 64")
    added = lines.index(f"preferred_batch_sizes = [64] # {MARK}")
    assert lines[added - 1] == "max_queue_size = 256"
    assert lines[added + 1] == ""
    assert written == apply(written, recommendation(), "cpu")  # idempotent


def test_spinning_and_a_low_load_instance_are_written_and_taken_back() -> None:
    """What tuning at load chooses for lone requests, fixed in the config: the layout's
    line spins, a low-load-only line follows; a later plain recommendation removes both."""
    from dataclasses import replace

    lone = replace(recommendation(), spinning=True, low_load_threads=2, low_load_spinning=True)
    written = apply("", lone, "cpu")
    assert tomllib.loads(written)["instances"] == [
        {"device": "cpu", "count": 2, "threads": 1, "spinning": True},
        {"device": "cpu", "count": 1, "threads": 2, "spinning": True, "low_load_only": True},
    ]
    assert written == apply(written, lone, "cpu")  # idempotent
    lines = ModelConfig.model_validate(tomllib.loads(written)).instances
    assert [line.low_load_only for line in lines] == [False, True]
    plain = tomllib.loads(apply(written, recommendation(), "cpu"))
    assert plain["instances"] == [{"device": "cpu", "count": 2, "threads": 1, "spinning": False}]


def test_other_devices_lines_stay_and_the_devices_lines_become_one() -> None:
    original = """max_batch_size = 8  # small
[[instances]]
device = "cuda:0"
count = 1

[[instances]]
count = 3   # device defaults to cpu
threads = 1

[[instances]]
device = "cpu"
count = 1
"""
    config = tomllib.loads(apply(original, recommendation(Layout(1, 2), 16, (8, 16)), "cpu"))
    assert config["instances"] == [
        {"device": "cuda:0", "count": 1},
        {"count": 1, "threads": 2, "device": "cpu"},
    ]
    assert "max_batch_size = 128  # small" in apply(original, recommendation(), "cpu")
    gpu = tomllib.loads(apply(original, recommendation(Layout(2, 4)), "cuda:1"))
    assert gpu["instances"][-1] == {"device": "cuda:1", "count": 2, "threads": 4}
    assert len(gpu["instances"]) == 4


def test_an_empty_config_gets_every_key() -> None:
    config = ModelConfig.model_validate(tomllib.loads(apply("", recommendation(), "cpu")))
    assert config.max_batch_size == 128 and config.batching.preferred_batch_sizes == [64]
    assert [(i.device, i.count, i.threads) for i in config.instances] == [("cpu", 2, 1)]


def test_a_model_that_does_not_batch_keeps_its_batch_settings() -> None:
    original = "max_batch_size = 0\n"
    config = tomllib.loads(apply(original, recommendation(max_batch_size=None), "cpu"))
    assert config["max_batch_size"] == 0 and "batching" not in config


def test_write_config_replaces_the_file_and_the_server_would_load_it(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("# mine\nmax_batch_size = 4\n")
    path = write_config(tmp_path, recommendation(), "cpu")
    assert path.read_text().startswith("# mine\n")
    assert load_model_config(tmp_path).max_batch_size == 128
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary left


def test_a_config_the_recommendation_would_break_is_left_alone(tmp_path: Path) -> None:
    broken = "max_batch_size = 4\n[batching]\nmax_queue_delay_ms = 'soon'\n"
    (tmp_path / "config.toml").write_text(broken)
    with pytest.raises(ProfileError, match=r"batching.max_queue_delay_ms.*was not changed"):
        write_config(tmp_path, recommendation(), "cpu")
    assert (tmp_path / "config.toml").read_text() == broken
    (tmp_path / "config.toml").write_text("max_batch_size = [\n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        write_config(tmp_path, recommendation(), "cpu")
