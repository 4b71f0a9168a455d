"""The repository's side of tuning at load: whether a version is tuned (its config, the
server's settings), what its config fixes, and the config it serves with once tuned.

The measuring and the rule are app.tuning's; nothing here times anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.repository.config import InstanceConfig, ModelConfig
from app.repository.samples import TuningSamples
from app.tuning.at_load import ModelLimits, TuneSettings, tune
from app.tuning.plan import DEFAULT_SEQUENCE_LENGTH
from app.tuning.result import Tuning


def tune_version(
    model_path: Path,
    config: ModelConfig,
    *,
    settings: TuneSettings,
    label: str,
    samples: TuningSamples,
) -> Tuning:
    """The version's tuning: none where its config sets the instances or turns tuning off,
    or the server does; else measured (or read from the cache) within what the config
    fixes."""
    if "instances" in config.model_fields_set:
        return Tuning("config", "config.toml sets [[instances]]")
    if config.autotune is False:
        return Tuning("off", "autotune = false in config.toml")
    if not settings.enabled:
        return Tuning("off", "BATCHSERVE_AUTOTUNE is off")
    return tune(
        model_path, limits=model_limits(config), settings=settings, label=label,
        samples=samples,
    )  # fmt: skip


def model_limits(config: ModelConfig) -> ModelLimits:
    """What `config` fixes, which tuning keeps: max_batch_size, the preferred sizes, and the
    tokenizer's max_length as the length of synthetic token sequences."""
    length = DEFAULT_SEQUENCE_LENGTH
    if config.tokenizer is not None:
        length = min(length, config.tokenizer.max_length)
    return ModelLimits(
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(config.batching.preferred_batch_sizes),
        sequence_length=length,
    )


def apply_tuning(tuning: Tuning, config: ModelConfig) -> ModelConfig:
    """`config` with what tuning chose where the config is silent."""
    if not tuning.chosen or tuning.count is None or tuning.threads is None:
        return config
    if tuning.device == "cuda":
        gpus = InstanceConfig(device="cuda:*", count=tuning.count, threads=tuning.threads)
        return _batch_sizes(tuning, config, {"instances": [gpus]})
    instances = [
        InstanceConfig(
            device="cpu", count=tuning.count, threads=tuning.threads, spinning=tuning.spinning
        )
    ]
    if tuning.low_load_threads is not None:
        low_load = InstanceConfig(
            device="cpu", count=1, threads=tuning.low_load_threads,
            spinning=tuning.low_load_spinning, low_load_only=True,
        )  # fmt: skip
        instances.append(low_load)
    return _batch_sizes(tuning, config, {"instances": instances})


def _batch_sizes(tuning: Tuning, config: ModelConfig, update: dict[str, Any]) -> ModelConfig:
    if config.max_batch_size is None and tuning.max_batch_size is not None:
        update["max_batch_size"] = tuning.max_batch_size
    served = update.get("max_batch_size", config.max_batch_size)
    preferred = tuning.batch_size
    if not config.batching.preferred_batch_sizes and preferred and preferred < (served or 0):
        update["batching"] = config.batching.model_copy(
            update={"preferred_batch_sizes": [preferred]}
        )
    return config.model_copy(update=update)
