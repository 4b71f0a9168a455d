"""The GPU check's models and data (load_tests/gpu/check.py): its settings, the model
repository it serves (each model twice, batching on and off), the digits rows and the text
model's reference, and the binary v2 requests it sends and the responses it reads back."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from load_tests.loadgen import BINARY_HEADER, PreparedRequest

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits"
MAX_BATCH = 64
SEQUENCE = 128


@dataclass
class Settings:
    device: str
    models: list[str]
    minilm: Path
    window_s: float
    concurrencies: list[int]
    processes: int
    batch_sizes: list[int]
    raw_s: float
    budget_s: float


# -- the models ------------------------------------------------------------------------


def write_repository(root: Path, settings: Settings) -> None:
    """Each model twice, batching on and off, with one worker on the device."""
    threads = 1 if settings.device.startswith("cuda") else 2
    instance = f'[[instances]]\ndevice = "{settings.device}"\ncount = 1\nthreads = {threads}\n'
    for model in settings.models:
        for suffix, max_batch in (("", MAX_BATCH), ("_nobatch", 0)):
            version = root / f"{model}{suffix}" / "1"
            version.mkdir(parents=True)
            config = f"max_batch_size = {max_batch}\n[batching]\nmax_queue_size = 4096\n"
            if model == "digits":
                shutil.copy(DIGITS / "1" / "model.onnx", version / "model.onnx")
            else:
                shutil.copy(settings.minilm / "1" / "model.onnx", version / "model.onnx")
                if max_batch:  # requests of different lengths share batches, as shipped
                    config += "[padding]\ninputs = { input_ids = 0, attention_mask = 0, "
                    config += "token_type_ids = 0 }\nmax_padding_ratio = 0.25\n"
            (version.parent / "config.toml").write_text(config + instance)


def digits_rows() -> np.ndarray:
    return np.load(DIGITS / "data" / "test_x.npy").astype(np.float32)


def minilm_reference(settings: Settings) -> dict[str, np.ndarray]:
    with np.load(settings.minilm / "reference.npz") as data:
        return {name: data[name] for name in data.files}


def token_feeds(
    reference: dict[str, np.ndarray], rows: Sequence[int], length: int
) -> dict[str, np.ndarray]:
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {n: np.ascontiguousarray(reference[n][list(rows), :length]) for n in names}


def binary_request(feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> PreparedRequest:
    """One v2 request with binary tensors both ways."""
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    inputs, chunks = [], []
    for name, array in feeds.items():
        chunks.append(array.tobytes())
        inputs.append({"name": name, "shape": list(array.shape),
                       "datatype": datatypes[array.dtype],
                       "parameters": {"binary_data_size": len(chunks[-1])}})  # fmt: skip
    header = json.dumps({"inputs": inputs, "outputs": [
        {"name": n, "parameters": {"binary_data": True}} for n in outputs]}).encode()  # fmt: skip
    headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))}
    rows = next(iter(feeds.values())).shape[0]
    return PreparedRequest(header + b"".join(chunks), headers, rows, True)


def load_request(model: str, settings: Settings) -> PreparedRequest:
    """What the load generators send: one real sample (text: 128 tokens)."""
    if model == "digits":
        return binary_request({"input": digits_rows()[:1]}, ["label", "probabilities"])
    feeds = token_feeds(minilm_reference(settings), [0], SEQUENCE)
    return binary_request(feeds, ["sentence_embedding"])


def decode(payload: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of a v2 response (JSON or binary)."""
    numpy = {"FP32": np.float32, "INT64": np.int64}
    if not header_length:
        body = json.loads(payload)
        return {o["name"]: np.array(o["data"], dtype=numpy[o["datatype"]]).reshape(o["shape"])
                for o in body["outputs"]}  # fmt: skip
    size = int(header_length)
    header, offset, result = json.loads(payload[:size]), size, {}
    for o in header["outputs"]:
        length = o["parameters"]["binary_data_size"]
        data = np.frombuffer(payload[offset : offset + length], dtype=numpy[o["datatype"]])
        result[o["name"]] = data.reshape(o["shape"])
        offset += length
    return result
