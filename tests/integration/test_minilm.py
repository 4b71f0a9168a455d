"""The shipped text model (all-MiniLM-L6-v2, built by `make text-model`) against a real
server: embeddings served from raw text equal SentenceTransformer.encode's, whatever mix of
lengths and arrival times shares their batches; the int8 version serves beside it.

The references (models/minilm/reference.npz) were computed by sentence-transformers when
the model was built, so these tests need no torch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testing.server_process import ServerProcess
from tests.conftest import MODELS

MODEL_DIR = MODELS / "minilm"
BUILT = (MODEL_DIR / "1" / "model.onnx").exists() and (MODEL_DIR / "reference.npz").exists()

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not BUILT, reason="text model not built: `make text-model` (make test does)"
    ),
]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(MODEL_DIR / "reference.npz", allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(MODELS)  # the shipped repository as `make serve` serves it
    yield process
    process.stop()


def text_body(texts: list[str]) -> dict[str, object]:
    return {
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
        "outputs": [{"name": "sentence_embedding"}],
    }


def embeddings(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "sentence_embedding"
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_metadata_offers_text_and_token_ids(server: ServerProcess) -> None:
    metadata = httpx.get(f"{server.url}/v2/models/minilm/versions/1").json()
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("text", "BYTES"), ("input_ids", "INT64"), ("attention_mask", "INT64"),
        ("token_type_ids", "INT64"),
    ]  # fmt: skip
    assert {o["name"] for o in metadata["outputs"]} == {"last_hidden_state", "sentence_embedding"}
    assert httpx.get(f"{server.url}/v2/models/minilm").json()["versions"] == ["1", "2", "3"]


#: The fp32 version and the pruned one (models/build_minilm.py: 5% of the feed-forward units
#: removed, held to 0.97 of fp32), each with the cosine it keeps to SentenceTransformer.
EXACT_VERSIONS = [pytest.param("1", 0.9999, id="fp32"), pytest.param("2", 0.97, id="pruned")]


@pytest.mark.parametrize(("version", "min_cosine"), EXACT_VERSIONS)
def test_every_sentence_in_one_request_matches_sentence_transformers(
    server: ServerProcess, reference: dict[str, np.ndarray], version: str, min_cosine: float
) -> None:
    texts = [str(s) for s in reference["sentences"]]
    url = f"{server.url}/v2/models/minilm/versions/{version}/infer"
    got = embeddings(httpx.post(url, json=text_body(texts), timeout=60))
    assert cosines(got, reference["embeddings"]).min() >= min_cosine


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    requests=st.lists(
        st.tuples(
            st.lists(st.integers(min_value=0, max_value=23), min_size=1, max_size=3),
            st.floats(min_value=0.0, max_value=0.005),  # gap before it is sent
        ),
        min_size=2,
        max_size=12,
    )
)
@pytest.mark.parametrize(("version", "min_cosine"), EXACT_VERSIONS)
def test_any_mix_of_lengths_and_arrivals_gets_the_reference_embeddings(
    server: ServerProcess,
    reference: dict[str, np.ndarray],
    requests: list[tuple[list[int], float]],
    version: str,
    min_cosine: float,
) -> None:
    sentences = [str(s) for s in reference["sentences"]]
    url = f"{server.url}/v2/models/minilm/versions/{version}/infer"

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            sent = []
            for picks, gap in requests:
                body = text_body([sentences[i % len(sentences)] for i in picks])
                sent.append(asyncio.ensure_future(client.post(url, json=body)))
                await asyncio.sleep(gap)
            return await asyncio.gather(*sent)

    for (picks, _), response in zip(requests, asyncio.run(send_all()), strict=True):
        want = reference["embeddings"][[i % len(sentences) for i in picks]]
        assert cosines(embeddings(response), want).min() >= min_cosine


def test_clients_that_tokenize_themselves_get_the_same(
    server: ServerProcess, reference: dict[str, np.ndarray]
) -> None:
    row, length = 5, int(reference["lengths"][5])
    inputs = [
        {"name": name, "shape": [1, length], "datatype": "INT64",
         "data": reference[name][row, :length].tolist()}
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]  # fmt: skip
    body = {"inputs": inputs, "outputs": [{"name": "sentence_embedding"}]}
    got = embeddings(httpx.post(f"{server.url}/v2/models/minilm/versions/1/infer", json=body))
    assert cosines(got, reference["embeddings"][row : row + 1])[0] >= 0.9999


@pytest.mark.parametrize(
    ("version", "min_cosine"), [pytest.param("3", 0.98, id="int8"), *EXACT_VERSIONS[1:]]
)
def test_the_optimized_versions_serve_beside_fp32(
    server: ServerProcess, reference: dict[str, np.ndarray], version: str, min_cosine: float
) -> None:
    """Each sentence alone, as a client sends it, against the fp32 version's embedding."""
    texts = [str(s) for s in reference["sentences"]]
    url = f"{server.url}/v2/models/minilm/versions/{version}/infer"
    fp32_url = f"{server.url}/v2/models/minilm/versions/1/infer"
    for text in texts:
        got = embeddings(httpx.post(url, json=text_body([text]), timeout=60))
        want = embeddings(httpx.post(fp32_url, json=text_body([text]), timeout=60))
        assert cosines(got, want)[0] >= min_cosine, text


def test_no_outputs_named_means_the_embedding_and_tokenizing_is_timed(
    server: ServerProcess, reference: dict[str, np.ndarray]
) -> None:
    """default_outputs spares clients the per-token states they did not ask for; the
    tokenizer stage's own histogram says how long tokenizing took."""
    stage = {"model": "minilm", "version": "1", "stage": "tokenize"}
    before = server.metric("batchserve_stage_duration_seconds_count", **stage)
    body = text_body([str(reference["sentences"][0])])
    del body["outputs"]
    response = httpx.post(f"{server.url}/v2/models/minilm/versions/1/infer", json=body)
    got = embeddings(response)  # the one output is the embedding
    assert cosines(got, reference["embeddings"][:1]).min() >= 0.9999
    assert server.metric("batchserve_stage_duration_seconds_count", **stage) == before + 1
