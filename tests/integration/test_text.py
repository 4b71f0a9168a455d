"""Raw text in, against a real server: a model with a `[tokenizer]` takes BYTES strings,
tokenizes them off the event loop in batches, and batches requests of different lengths
with bounded padding; every request gets what the model gives its own ids alone.

The model is load_tests' masked embedding model (a text encoder's shape, built here) and the
tokenizer a word-level tokenizer.json built here with the `tokenizers` library."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from testing.server_process import ServerProcess
from testing.synthetic_models import write_token_model, write_word_tokenizer

pytestmark = pytest.mark.integration

WORDS = [f"w{i}" for i in range(1, 200)]
MAX_LENGTH = 24
CONFIG = f"""
max_batch_size = 16
[padding]
inputs = {{ input_ids = 0, attention_mask = 0 }}
max_padding_ratio = 0.25
[tokenizer]
input = "text"
max_length = {MAX_LENGTH}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("text") / "repository"
    write_token_model(root / "embed" / "1" / "model.onnx")
    (root / "embed" / "config.toml").write_text(CONFIG)
    write_word_tokenizer(root / "embed" / "tokenizer.json", WORDS)
    server = ServerProcess(root)
    yield server, root / "embed"
    server.stop()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def expected(model_dir: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """The model on this request's own ids alone (no other request's padding)."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LENGTH)
    encodings = [tokenizer.encode(t).ids for t in texts]
    longest = max(len(ids) for ids in encodings)
    ids = np.zeros((len(texts), longest), dtype=np.int64)
    for row, own in enumerate(encodings):
        ids[row, : len(own)] = own
    mask = (ids != 0).astype(np.int64)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    hidden, pooled = session.run(None, {"input_ids": ids, "attention_mask": mask})
    return {"hidden": hidden, "pooled": pooled}


def text_body(texts: list[str]) -> dict[str, object]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def test_metadata_offers_text_and_token_ids(served: tuple[ServerProcess, Path]) -> None:
    server, _ = served
    inputs = httpx.get(f"{server.url}/v2/models/embed").json()["inputs"]
    # [-1, 1] as Triton shows a string per sample; [n] is accepted as well as [n, 1].
    assert inputs[0] == {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}
    assert [i["name"] for i in inputs[1:]] == ["input_ids", "attention_mask"]


def test_concurrent_texts_of_mixed_lengths_get_their_own_embeddings(
    served: tuple[ServerProcess, Path],
) -> None:
    server, model_dir = served
    rng = random.Random(7)
    requests = [
        [sentence(rng, rng.choice([1, 2, 3, 5, 8, 13, 30])) for _ in range(rng.randint(1, 3))]
        for _ in range(60)
    ]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/embed/infer", json=text_body(t)) for t in requests)
            )

    padding_before = server.metric("batchserve_sequence_positions_total", kind="padding")
    responses = asyncio.run(send_all())
    for texts, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        want = expected(model_dir, texts)
        for name in ("hidden", "pooled"):
            assert outputs[name]["shape"] == list(want[name].shape), name
            got = np.array(outputs[name]["data"], dtype=np.float32).reshape(want[name].shape)
            np.testing.assert_allclose(got, want[name], atol=1e-5)
    real = server.metric("batchserve_sequence_positions_total", kind="request")
    padding = server.metric("batchserve_sequence_positions_total", kind="padding")
    assert real > 0 and padding - padding_before <= 0.25 * real
    # ... and they really were batched together, tokenizer and model alike.
    samples = server.metric("batchserve_inferences_total", model="embed")
    assert samples / server.metric("batchserve_executions_total", model="embed") > 1.5


def test_long_texts_are_truncated_to_max_length(served: tuple[ServerProcess, Path]) -> None:
    server, _ = served
    long_text = " ".join(WORDS[:100])
    response = httpx.post(f"{server.url}/v2/models/embed/infer", json=text_body([long_text]))
    hidden = next(o for o in response.json()["outputs"] if o["name"] == "hidden")
    assert hidden["shape"] == [1, MAX_LENGTH, 32]


def test_clients_that_tokenize_themselves_get_the_same(
    served: tuple[ServerProcess, Path],
) -> None:
    server, _ = served
    ids = [[5, 9, 11, 40]]
    body = {
        "inputs": [
            {"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": ids},
            {"name": "attention_mask", "shape": [1, 4], "datatype": "INT64", "data": [[1] * 4]},
        ]
    }
    from_ids = httpx.post(f"{server.url}/v2/models/embed/infer", json=body).json()
    from_text = httpx.post(
        f"{server.url}/v2/models/embed/infer", json=text_body(["w4 w8 w10 w39"])
    ).json()
    assert from_ids["outputs"] == from_text["outputs"]


def test_text_and_ids_together_or_neither_is_a_400(served: tuple[ServerProcess, Path]) -> None:
    server, _ = served
    both = text_body(["w1"])
    both["inputs"].append(  # type: ignore[attr-defined]
        {"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [[3]]}
    )
    response = httpx.post(f"{server.url}/v2/models/embed/infer", json=both)
    assert response.status_code == 400
    assert "give exactly one of these sets of inputs: ['text'] or" in response.json()["error"]


def test_triton_config_declares_text_as_one_string_per_sample(
    served: tuple[ServerProcess, Path],
) -> None:
    """Triton allows no empty dims, so perf_analyzer and Model Analyzer read a string per
    sample as dims [1] reshaped to []; and each set of inputs may be left out."""
    server, _ = served
    config = httpx.get(f"{server.url}/v2/models/embed/config").json()
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["text"]["dims"] == [1] and inputs["text"]["reshape"] == {"shape": []}
    assert inputs["input_ids"]["dims"] == [-1] and "reshape" not in inputs["input_ids"]
    assert all(i["optional"] for i in config["input"])


def test_texts_sent_as_batch_by_one_get_the_same_as_a_flat_batch(
    served: tuple[ServerProcess, Path],
) -> None:
    server, _ = served
    texts = ["w4 w8 w10 w39", "w2 w3"]
    flat = httpx.post(f"{server.url}/v2/models/embed/infer", json=text_body(texts)).json()
    column = text_body(texts)
    column["inputs"][0]["shape"] = [2, 1]  # type: ignore[index]
    as_column = httpx.post(f"{server.url}/v2/models/embed/infer", json=column).json()
    assert as_column["outputs"] == flat["outputs"]
    column["inputs"][0]["shape"] = [1, 2]  # type: ignore[index]
    refused = httpx.post(f"{server.url}/v2/models/embed/infer", json=column)
    assert refused.status_code == 400
    assert "shape [1, 2] does not match the model's [-1]" in refused.json()["error"]
