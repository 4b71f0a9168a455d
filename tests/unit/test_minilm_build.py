"""The text model's build artefacts (models/minilm, from models/build_minilm.py) are what the
server relies on: graph names, dtypes and shared dim names, embeddings equal to
SentenceTransformer.encode's references, and a tokenizer.json that gives the reference ids.

`make test` builds the model first, so these run in CI; without a build they are skipped."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from tests.conftest import MODELS

MODEL_DIR = MODELS / "minilm"

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "1" / "model.onnx").exists(),
    reason="models/minilm/1/model.onnx is not built: `make text-model` builds it (make test does)",
)

TOKEN_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
#: Reference rows run alone: a 5-token one, a middling one and one truncated at 128 tokens.
ROWS = [3, 15, 23]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(MODEL_DIR / "reference.npz", allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def session(version: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(MODEL_DIR / str(version) / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def fp32() -> ort.InferenceSession:
    return session(1)


@pytest.fixture(scope="module")
def int8() -> ort.InferenceSession:
    return session(3)


def embed_alone(
    graph: ort.InferenceSession, reference: dict[str, np.ndarray], rows: list[int]
) -> np.ndarray:
    """Each row's sentence_embedding from its own ids, unpadded (a batch of one)."""
    out = []
    for row in rows:
        n = int(reference["lengths"][row])
        feed = {name: reference[name][row : row + 1, :n] for name in TOKEN_INPUTS}
        out.append(graph.run(["sentence_embedding"], feed)[0][0])
    return np.stack(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_graph_signature_is_what_the_server_expects(version: int) -> None:
    graph = session(version)
    token = ["batch", "sequence"]
    assert [(i.name, i.type, i.shape) for i in graph.get_inputs()] == [
        (name, "tensor(int64)", token) for name in TOKEN_INPUTS
    ]
    # The shared "sequence" name is how the server knows to cut last_hidden_state back.
    assert [(o.name, o.type, o.shape) for o in graph.get_outputs()] == [
        ("last_hidden_state", "tensor(float)", [*token, 384]),
        ("sentence_embedding", "tensor(float)", ["batch", 384]),
    ]


def test_reference_covers_short_and_truncated_sentences(reference: dict[str, np.ndarray]) -> None:
    lengths = reference["lengths"]
    assert len(reference["sentences"]) == len(reference["embeddings"]) == len(lengths) >= 20
    assert reference["embeddings"].dtype == np.float32
    assert reference["embeddings"].shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(reference["embeddings"], axis=1), 1, atol=1e-5)
    assert lengths.min() < 10 and (lengths == reference["max_length"]).sum() >= 3
    short, middling, truncated = (int(lengths[r]) for r in ROWS)
    assert short < 10 < middling < truncated == reference["max_length"]


def test_fp32_embeddings_equal_sentence_transformers(
    fp32: ort.InferenceSession, reference: dict[str, np.ndarray]
) -> None:
    got = embed_alone(fp32, reference, ROWS)
    want = reference["embeddings"][ROWS]
    assert np.abs(got - want).max() <= 1e-4
    assert cosines(got, want).min() >= 0.9999


def test_int8_embeddings_stay_close(
    int8: ort.InferenceSession, reference: dict[str, np.ndarray]
) -> None:
    got = embed_alone(int8, reference, ROWS)
    assert cosines(got, reference["embeddings"][ROWS]).min() >= 0.98


def test_tokenizer_file_gives_the_reference_ids(reference: dict[str, np.ndarray]) -> None:
    config = tomllib.loads((MODEL_DIR / "config.toml").read_text())
    tokenizer = Tokenizer.from_file(str(MODEL_DIR / config["tokenizer"]["file"]))
    assert tokenizer.padding is None, "the server pads; a padded file would pad every text"
    assert tokenizer.truncation is not None
    assert tokenizer.truncation["max_length"] == config["tokenizer"]["max_length"]
    assert int(reference["max_length"]) == config["tokenizer"]["max_length"]
    sentences = [str(s) for s in reference["sentences"]]
    for row, encoding in enumerate(tokenizer.encode_batch(sentences)):
        n = int(reference["lengths"][row])
        assert encoding.ids == reference["input_ids"][row, :n].tolist(), sentences[row][:40]
        assert not reference["input_ids"][row, n:].any()
        assert encoding.attention_mask == reference["attention_mask"][row, :n].tolist()


def test_sample_request_is_three_texts_for_the_embedding() -> None:
    body = json.loads((MODEL_DIR / "sample_request.json").read_text())
    (text,) = body["inputs"]
    assert (text["name"], text["datatype"], text["shape"]) == ("text", "BYTES", [3])
    assert body["outputs"] == [{"name": "sentence_embedding"}]
