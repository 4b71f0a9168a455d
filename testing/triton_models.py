"""ONNX builds of the models Triton's example clients call, as a batchserve repository.

    python -m testing.triton_models DIR     # then: batchserve serve --model-repository DIR

Triton's examples (triton-inference-server/client, src/python/examples) run against its QA
models; these are the same contracts built as ONNX graphs here, nothing downloaded:
- simple: INPUT0, INPUT1 INT32 [-1, 16] -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1
- simple_int8: the same in INT8 (computed in INT32, cast back, so it wraps as INT8 does)
- simple_string: the same on BYTES [-1, 16] holding decimal numbers (Cast to INT32 and back)
- simple_identity: BYTES INPUT0 [-1, -1] -> OUTPUT0, unchanged
Each batches up to 8 samples, as Triton's configs of them do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from testing.synthetic_models import save_graph

MAX_BATCH_SIZE = 8
CONFIG = f"""\
# Triton's example model {{name}} (testing/triton_models.py), for its example clients.
max_batch_size = {MAX_BATCH_SIZE}

[[instances]]
device = "cpu"
count = 1
threads = 1
"""


def _save(graph: onnx.GraphProto, root: Path, name: str) -> None:
    save_graph(graph, root / name / "1" / "model.onnx")
    (root / name / "config.toml").write_text(CONFIG.format(name=name))


def _add_sub(name: str, elem: int, compute: int | None) -> onnx.GraphProto:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 on `elem` tensors [batch, 16],
    computed in `compute` (cast in and back) when given."""
    nodes = []
    left, right = "INPUT0", "INPUT1"
    if compute is not None:
        nodes += [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=compute),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=compute),
        ]
        left, right = "a", "b"
    sums, differences = ("sum", "difference") if compute is not None else ("OUTPUT0", "OUTPUT1")
    nodes += [
        helper.make_node("Add", [left, right], [sums]),
        helper.make_node("Sub", [left, right], [differences]),
    ]
    if compute is not None:
        nodes += [
            helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=elem),
            helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=elem),
        ]
    shape = ["batch", 16]
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(n, elem, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, elem, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )


def write_repository(root: Path) -> list[str]:
    """Write the four models under `root`; their names."""
    _save(_add_sub("simple", TensorProto.INT32, None), root, "simple")
    _save(_add_sub("simple_int8", TensorProto.INT8, TensorProto.INT32), root, "simple_int8")
    _save(_add_sub("simple_string", TensorProto.STRING, TensorProto.INT32), root, "simple_string")
    identity = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", "length"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", "length"])],
    )
    _save(identity, root, "simple_identity")
    return ["simple", "simple_int8", "simple_string", "simple_identity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="directory to write the repository into")
    args = parser.parse_args()
    names = write_repository(args.root)
    print(f"wrote {', '.join(names)} under {args.root}")


if __name__ == "__main__":
    main()
