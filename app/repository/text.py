"""Build a model's tokenizer step from its `[tokenizer]` config, checked against the graph."""

from __future__ import annotations

from pathlib import Path

from app.errors import ModelLoadError
from app.preprocess import TextStage, TextTokenizer
from app.preprocess.text import TOKEN_INPUTS
from app.repository.sections import TokenizerConfig
from app.tensors import TensorSpec


def build_text_stage(
    config: TokenizerConfig | None,
    model_dir: Path,
    inputs: tuple[TensorSpec, ...],
    max_batch_size: int,
    max_queue_size: int,
) -> TextStage | None:
    if config is None:
        return None
    names = tuple(spec.name for spec in inputs)
    if "input_ids" not in names or not set(names) <= set(TOKEN_INPUTS):
        raise ModelLoadError(
            f"[tokenizer] fills {list(TOKEN_INPUTS)}, but the model's inputs are {list(names)}"
        )
    if config.input in names:
        raise ModelLoadError(f"tokenizer.input '{config.input}' is already a model input")
    if max_batch_size <= 0:
        raise ModelLoadError("[tokenizer] needs batching: set max_batch_size above 0")
    path = (model_dir / config.file).resolve()
    if model_dir.resolve() not in path.parents or not path.is_file():
        raise ModelLoadError(
            f"tokenizer.file '{config.file}' is not a file inside {model_dir}; put the "
            "tokenizer.json next to config.toml"
        )
    return TextStage(config.input, TextTokenizer(path, config.max_length, names), max_queue_size)
