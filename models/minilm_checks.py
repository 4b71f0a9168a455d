"""The checks models/build_minilm.py makes before it writes anything: the tokenizer file
against SentenceTransformer's tokenization, the fp32 graph against SentenceTransformer.encode,
the int8 and pruned graphs against fp32, and the graphs' signatures as the server expects
them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from minilm_data import DIM, INPUTS, MAX_LENGTH, OUTPUTS, SENTENCES
from sentence_transformers import SentenceTransformer

#: fp32 ONNX vs SentenceTransformer.encode.
MAX_ABS_DIFF = 1e-4
MIN_COSINE_FP32 = 0.9999
#: int8 vs fp32 (dynamic quantization costs a little accuracy).
MIN_COSINE_INT8 = 0.98
#: pruned (v2) vs fp32.
MIN_COSINE_PRUNED = 0.97


def check_tokenizer(
    reference: SentenceTransformer, sentences: list[str], ids: np.ndarray, lengths: np.ndarray
) -> None:
    """The saved file must tokenize exactly as encode did, or the references mean nothing."""
    features = reference.preprocess(sentences)
    want = features["input_ids"].numpy()
    want_lengths = features["attention_mask"].numpy().sum(axis=1)
    assert np.array_equal(want_lengths, lengths), (want_lengths, lengths)
    for row, n in enumerate(lengths):
        assert np.array_equal(want[row, :n], ids[row, :n]), f"sentence {row} tokenizes differently"
    truncated = int((lengths == MAX_LENGTH).sum())
    assert truncated >= 3, f"only {truncated} sentences reach {MAX_LENGTH} tokens"
    words = [len(s.split()) for s in sentences]
    print(
        f"tokenizer: {len(sentences)} sentences, {min(words)}-{max(words)} words, "
        f"{lengths.min()}-{lengths.max()} tokens, {truncated} truncated at {MAX_LENGTH}; "
        "ids match SentenceTransformer.preprocess"
    )


def check_pruned(
    graph: ort.InferenceSession, ids: np.ndarray, lengths: np.ndarray, fp32_alone: np.ndarray
) -> None:
    _, alone = run_alone(graph, ids, lengths)
    cosine = cosines(alone, fp32_alone)
    print(f"pruned ONNX: min cosine vs fp32 {cosine.min():.5f} (mean {cosine.mean():.5f})")
    if cosine.min() < MIN_COSINE_PRUNED:
        raise SystemExit(
            f"pruned graph: min cosine vs fp32 {cosine.min():.5f} < {MIN_COSINE_PRUNED} "
            f"(sentence {int(cosine.argmin())}: {SENTENCES[int(cosine.argmin())][:60]!r})"
        )


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def feed(ids: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "input_ids": ids,
        "attention_mask": (ids != 0).astype(np.int64),
        "token_type_ids": np.zeros_like(ids),
    }


def run_alone(
    graph: ort.InferenceSession, ids: np.ndarray, lengths: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each sentence in a batch of its own, unpadded: last_hidden_state per sentence and the
    sentence embeddings [n, 384]."""
    hidden, pooled = [], []
    for row, n in enumerate(lengths):
        h, p = graph.run(list(OUTPUTS), feed(ids[row : row + 1, :n]))
        hidden.append(h[0])
        pooled.append(p[0])
    return hidden, np.stack(pooled)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def compare(what: str, got: np.ndarray, want: np.ndarray) -> None:
    diff = float(np.abs(got - want).max())
    cosine = float(cosines(got, want).min())
    print(f"  {what}: max abs diff {diff:.2e}, min cosine {cosine:.8f}")
    if not (diff <= MAX_ABS_DIFF and cosine >= MIN_COSINE_FP32):
        raise SystemExit(
            f"{what}: the ONNX graph disagrees with SentenceTransformer.encode "
            f"(max abs diff {diff:.2e} > {MAX_ABS_DIFF} or min cosine {cosine:.6f} < "
            f"{MIN_COSINE_FP32})"
        )


def check_fp32(
    reference: SentenceTransformer,
    graph: ort.InferenceSession,
    ids: np.ndarray,
    lengths: np.ndarray,
    embeddings: np.ndarray,
) -> np.ndarray:
    """The fp32 graph against encode: every sentence alone, and all in one padded batch (the
    server's case); the token states against the torch encoder's. Returns the alone embeddings.
    """
    print("fp32 ONNX vs SentenceTransformer.encode:")
    hidden, alone = run_alone(graph, ids, lengths)
    compare("sentence_embedding, each sentence alone", alone, embeddings)
    batch_hidden, batch_pooled = graph.run(list(OUTPUTS), feed(ids))
    compare(
        f"sentence_embedding, one padded batch [{len(ids)}, {ids.shape[1]}]",
        batch_pooled,
        embeddings,
    )
    with torch.no_grad():
        features = reference.preprocess(list(SENTENCES))
        states = reference[0].auto_model(**features).last_hidden_state.numpy()
    compare(
        "last_hidden_state, each sentence alone (vs the torch encoder, per token)",
        np.concatenate(hidden),
        np.concatenate([states[row, :n] for row, n in enumerate(lengths)]),
    )
    cut = np.concatenate([batch_hidden[row, :n] for row, n in enumerate(lengths)])
    print(
        "  last_hidden_state, padded batch cut back vs alone: max abs diff "
        f"{np.abs(cut - np.concatenate(hidden)).max():.2e}"
    )
    return alone


def check_int8(
    graph: ort.InferenceSession,
    ids: np.ndarray,
    lengths: np.ndarray,
    fp32_alone: np.ndarray,
    embeddings: np.ndarray,
) -> None:
    """int8 against fp32, sentence by sentence. Dynamic quantization picks each activation's
    scale over the whole batch tensor, so a sentence's int8 embedding also depends on what it
    is batched with: reported, not held to the fp32 tolerance."""
    _, alone = run_alone(graph, ids, lengths)
    cosine = cosines(alone, fp32_alone)
    _, batched = graph.run(list(OUTPUTS), feed(ids))
    print(
        f"int8 ONNX: min cosine vs fp32 {cosine.min():.5f} (mean {cosine.mean():.5f}), "
        f"vs encode {cosines(alone, embeddings).min():.5f}; one padded batch vs alone: "
        f"min cosine {cosines(batched, alone).min():.5f}"
    )
    if cosine.min() < MIN_COSINE_INT8:
        raise SystemExit(
            f"int8 graph: min cosine vs fp32 {cosine.min():.5f} < {MIN_COSINE_INT8} "
            f"(sentence {int(cosine.argmin())}: {SENTENCES[int(cosine.argmin())][:60]!r})"
        )


def check_signature(path: Path) -> None:
    """Names, dtypes and dim names as the server expects them."""
    proto = onnx.load(str(path), load_external_data=False)
    int64, float32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT

    def signature(values: Sequence[onnx.ValueInfoProto]) -> list[tuple[str, int, list[object]]]:
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    token = ["batch", "sequence"]
    assert signature(proto.graph.input) == [(name, int64, token) for name in INPUTS], path
    assert signature(proto.graph.output) == [
        ("last_hidden_state", float32, [*token, DIM]),
        ("sentence_embedding", float32, ["batch", DIM]),
    ], path
