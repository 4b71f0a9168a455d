"""Raw text in: a model may declare a tokenizer, so clients send strings, not token ids.

The tokenizer (HuggingFace `tokenizers`, from the model's tokenizer.json) runs in a worker
thread of its own, behind a batcher of its own: concurrent requests' texts are tokenized
together by one `encode_batch` call, never on the event loop. Each request's ids then go to
the model's batcher cut to the request's own longest text, so that variable-length batching
pads them only as far as the batch needs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from app.batching import Batcher, BatchingPolicy
from app.errors import ModelLoadError

#: The model inputs a tokenizer can fill, by their conventional names.
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TextTokenizer:
    """A BatchRunner: BYTES texts [n] -> input_ids, attention_mask, token_type_ids [n, L],
    L the longest text of this batch (at most `max_length` tokens)."""

    label = "tokenizer/0"
    device = "cpu"

    def __init__(self, path: Path, max_length: int, outputs: tuple[str, ...]) -> None:
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception for a bad file
            raise ModelLoadError(f"tokenizer {path} could not be loaded: {exc}") from None
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.no_padding()
        self.outputs = outputs

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (texts,) = inputs.values()
        encodings = self._tokenizer.encode_batch([str(text) for text in texts.tolist()])
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = encoding.attention_mask
            types[row, :n] = encoding.type_ids
        every = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: every[name] for name in self.outputs}


class TextStage:
    """The tokenizer of one model version, with its batcher; `tokenize` is awaited by the
    request path before the model's own batcher."""

    def __init__(self, input_name: str, tokenizer: TextTokenizer, max_queue_size: int) -> None:
        self.input = input_name
        policy = BatchingPolicy(max_batch_size=1024, max_queue_size=max_queue_size)
        self.batcher = Batcher(f"{input_name} tokenizer", policy, [tokenizer])

    def submit(
        self,
        texts: np.ndarray,
        *,
        deadline: float | None,
        priority: int | None,
        arrived: float | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue the request's texts; its future resolves to the token inputs, batch first,
        padded to the request's own longest text."""
        return self.batcher.submit(
            {self.input: texts}, deadline=deadline, priority=priority, arrived=arrived
        )


def cut_to_own_length(tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A request's rows of a tokenizer batch, without the columns only other requests used."""
    mask = tokens.get("attention_mask")
    if mask is None:
        return tokens
    longest = int(mask.sum(axis=1).max())
    return {name: np.ascontiguousarray(array[:, :longest]) for name, array in tokens.items()}
