"""Magnitude pruning of weight initializers.

Structured: removes whole hidden units between two consecutive linear layers (MatMul or Gemm
with initializer weights, joined only by a bias Add and elementwise activations): the first
layer's output columns, its bias entries and the second layer's input rows, chosen by
importance (|incoming weights and bias| x |outgoing weights|, which is invariant to the
rescaling a ReLU network allows between layers). The matrices really shrink, so the file is
smaller and dense kernels do less work.

Unstructured: zeroes the smallest-magnitude weights of each linear layer. The tensors keep
their shapes, so dense kernels compute exactly as much as before and get no faster; only the
compressed size shrinks (the report shows gzip sizes).

A graph the structured pruner cannot rewrite safely is refused before anything changes, with
the node that stopped it named: a weight or bias shared with another node, a hidden tensor
that feeds something else too (a residual branch), or an operator between two layers that is
not elementwise (a normalization, a reshape, a softmax).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from app.optimize.errors import OptimizeError, PruneRefused

LINEAR_OPS = ("MatMul", "Gemm")
#: Operators applied to each hidden unit independently, with no per-unit parameters.
ELEMENTWISE_OPS = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus",
        "Softsign", "HardSigmoid", "HardSwish", "Gelu", "Mish", "ThresholdedRelu",
        "Identity", "Clip", "Erf", "Abs", "Neg", "Exp",
    }
)  # fmt: skip
#: Operators that show a graph was quantized already (prune float graphs, then quantize).
QUANTIZED_OPS = frozenset(
    {"DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "QGemm",
     "QLinearConv", "ConvInteger"}
)  # fmt: skip
#: Operators whose weights unstructured pruning zeroes.
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def _label(node: onnx.NodeProto) -> str:
    return f"'{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(onnx.helper.get_attribute_value(attribute))
    return default


def _subgraph_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """Names a node's subgraphs (If, Loop, Scan) read, outer-scope tensors among them."""
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                yield from inner.input
                yield from _subgraph_inputs(inner)


class _Index:
    """Who produces and consumes each tensor of a graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in {*node.input, *_subgraph_inputs(node)}:
                if name:
                    self.consumers[name].append(node)

    def weight_of(self, node: onnx.NodeProto) -> str | None:
        """The initializer a MatMul/Gemm multiplies by (its B input), if it is one."""
        if node.op_type not in LINEAR_OPS or len(node.input) < 2:
            return None
        name = str(node.input[1])
        tensor = self.initializers.get(name)
        if tensor is None or len(tensor.dims) != 2:
            return None
        return name

    def check_private(self, name: str, node: onnx.NodeProto) -> None:
        """Refuse to reshape an initializer anything but `node` can see."""
        users = [n for n in self.consumers[name] if n is not node]
        if users:
            others = ", ".join(_label(n) for n in users[:3])
            raise PruneRefused(
                f"cannot prune {_label(node)}: its initializer '{name}' is shared with {others}; "
                "pruning it for one node would change the others"
            )
        if name in self.graph_inputs or name in self.graph_outputs:
            raise PruneRefused(
                f"cannot prune {_label(node)}: its initializer '{name}' is also a graph input "
                "or output, so a client could override or read it"
            )

    def reaches_linear(self, node: onnx.NodeProto) -> bool:
        """Whether a MatMul/Gemm with initializer weights lies downstream of `node`."""
        seen: set[int] = set()
        frontier = [node]
        while frontier:
            current = frontier.pop()
            for output in current.output:
                for user in self.consumers.get(output, []):
                    if id(user) in seen:
                        continue
                    seen.add(id(user))
                    if self.weight_of(user) is not None:
                        return True
                    frontier.append(user)
        return False


@dataclass
class _Pair:
    """Hidden units between `producer` and `consumer` (output features of one, input
    features of the other)."""

    producer: onnx.NodeProto
    consumer: onnx.NodeProto
    bias: str | None  # per-unit bias initializer (Gemm's C or an Add's), None if none
    tensors: list[str] = field(default_factory=list)  # hidden tensors whose shapes change


def _per_unit_bias(index: _Index, name: str, units: int, node: onnx.NodeProto) -> bool:
    """Whether bias `name` has one entry per unit (prune it) or broadcasts (leave it)."""
    dims = list(index.initializers[name].dims)
    if dims and dims[-1] == units and all(d == 1 for d in dims[:-1]):
        return True
    if all(d == 1 for d in dims):
        return False
    raise PruneRefused(
        f"cannot prune {_label(node)}: its bias '{name}' has shape {dims}, not one value per "
        f"unit ([{units}]) nor a scalar"
    )


def _units(index: _Index, node: onnx.NodeProto) -> int:
    dims = index.initializers[node.input[1]].dims
    transposed = node.op_type == "Gemm" and _attribute(node, "transB", 0)
    return int(dims[0] if transposed else dims[1])


def _follow(index: _Index, producer: onnx.NodeProto) -> _Pair | None:
    """The layer fed by `producer`'s hidden units, or None where its outputs end the
    network; PruneRefused where something unsafe sits between two layers."""
    units = _units(index, producer)
    bias = None
    if producer.op_type == "Gemm" and len(producer.input) > 2 and producer.input[2]:
        if producer.input[2] not in index.initializers:
            raise PruneRefused(f"cannot prune {_label(producer)}: its bias is not an initializer")
        if _per_unit_bias(index, producer.input[2], units, producer):
            bias = producer.input[2]
    tensor = producer.output[0]
    tensors = [tensor]
    seen_activation = False
    while True:
        if tensor in index.graph_outputs:
            return None  # the units are the model's outputs
        users = index.consumers.get(tensor, [])
        if not users:
            return None
        if len(users) > 1:
            if any(index.weight_of(u) is not None or index.reaches_linear(u) for u in users):
                others = ", ".join(_label(u) for u in users)
                raise PruneRefused(
                    f"cannot prune the units of {_label(producer)}: tensor '{tensor}' feeds "
                    f"{others}; a unit removed for one would change the others"
                )
            return None
        user = users[0]
        if user.op_type == "Add" and bias is None and not seen_activation:
            other = user.input[1] if user.input[0] == tensor else user.input[0]
            if other in index.initializers:
                if _per_unit_bias(index, other, units, user):
                    bias = other
                tensor = user.output[0]
                tensors.append(tensor)
                continue
        elif user.op_type in ELEMENTWISE_OPS and user.input[0] == tensor and len(user.output) == 1:
            extras = [name for name in user.input[1:] if name]
            if all(
                name in index.initializers and int(np.prod(index.initializers[name].dims)) == 1
                for name in extras
            ):
                seen_activation = True
                tensor = user.output[0]
                tensors.append(tensor)
                continue
        elif (
            index.weight_of(user) is not None
            and user.input[0] == tensor
            and not (user.op_type == "Gemm" and _attribute(user, "transA", 0))
        ):
            return _Pair(producer=producer, consumer=user, bias=bias, tensors=tensors)
        if index.reaches_linear(user) or index.weight_of(user) is not None:
            raise PruneRefused(
                f"cannot prune the units of {_label(producer)}: {_label(user)} sits between it "
                "and the next layer and is not an elementwise activation or per-unit bias, so "
                "removing units could change what it computes"
            )
        return None


@dataclass(frozen=True)
class PruneReport:
    method: str
    sparsity: float
    layers: list[dict[str, Any]]
    parameters_before: int
    parameters_after: int
    note: str


def _find_pairs(model: onnx.ModelProto) -> tuple[_Index, list[_Pair]]:
    index = _Index(model.graph)
    pairs = []
    for node in model.graph.node:
        if index.weight_of(node) is None:
            continue
        if node.op_type == "Gemm" and _attribute(node, "transA", 0):
            continue  # its output is still [M, N]; only its role as a consumer is limited
        pair = _follow(index, node)
        if pair is not None:
            pairs.append(pair)
    if not pairs:
        linear = [n for n in model.graph.node if n.op_type in LINEAR_OPS]
        weightless = [n for n in linear if index.weight_of(n) is None]
        quantized = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
        hint = ""
        if quantized:
            hint = (
                f"; the model is already quantized ({_label(quantized[0])}): prune the float "
                "model, then quantize the pruned one"
            )
        elif weightless:
            hint = (
                f"; {_label(weightless[0])} takes its weight from a computed tensor, not an "
                "initializer"
            )
        raise PruneRefused(
            "found no two MatMul/Gemm layers with initializer weights joined only by a bias Add "
            f"and elementwise activations, so there are no hidden units to remove{hint}"
        )
    for pair in pairs:  # everything checked before anything changes
        for node in (pair.producer, pair.consumer):
            index.check_private(node.input[1], node)
        if pair.bias is not None:
            owner = next(n for n in index.consumers[pair.bias])
            index.check_private(pair.bias, owner)
    return index, pairs


def prune_structured(model: onnx.ModelProto, sparsity: float) -> PruneReport:
    """Remove `sparsity` of the hidden units at every prunable boundary, in place."""
    if not 0.0 <= sparsity < 1.0:
        raise OptimizeError(f"--sparsity must be in [0, 1), got {sparsity}")
    index, pairs = _find_pairs(model)
    arrays = {name: numpy_helper.to_array(t) for name, t in index.initializers.items()}
    counted = {name for p in pairs for name in (p.producer.input[1], p.consumer.input[1], p.bias)}
    before = sum(arrays[n].size for n in counted if n)
    layers = []
    for pair in pairs:
        w_in_name, w_out_name = pair.producer.input[1], pair.consumer.input[1]
        in_t = pair.producer.op_type == "Gemm" and _attribute(pair.producer, "transB", 0)
        out_t = pair.consumer.op_type == "Gemm" and _attribute(pair.consumer, "transB", 0)
        w_in = arrays[w_in_name].T if in_t else arrays[w_in_name]  # [inputs, units]
        w_out = arrays[w_out_name].T if out_t else arrays[w_out_name]  # [units, outputs]
        incoming = np.square(w_in.astype(np.float64)).sum(axis=0)
        if pair.bias is not None:
            incoming += np.square(arrays[pair.bias].reshape(-1).astype(np.float64))
        outgoing = np.square(w_out.astype(np.float64)).sum(axis=1)
        importance = np.sqrt(incoming) * np.sqrt(outgoing)
        units = importance.size
        kept = max(1, round(units * (1.0 - sparsity)))
        keep = np.sort(np.argsort(-importance, kind="stable")[:kept])
        arrays[w_in_name] = np.ascontiguousarray((w_in[:, keep]).T if in_t else w_in[:, keep])
        arrays[w_out_name] = np.ascontiguousarray((w_out[keep]).T if out_t else w_out[keep])
        if pair.bias is not None:
            bias = arrays[pair.bias]
            arrays[pair.bias] = np.ascontiguousarray(bias[..., keep])
        layers.append(
            {
                "producer": pair.producer.name,
                "consumer": pair.consumer.name,
                "units_before": int(units),
                "units_after": int(kept),
            }
        )
    for name in counted:
        if name:
            index.initializers[name].CopyFrom(numpy_helper.from_array(arrays[name], name))
    changed = {t for p in pairs for t in p.tensors}
    kept_info = [v for v in model.graph.value_info if v.name not in changed]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    after = sum(arrays[n].size for n in counted if n)
    return PruneReport(
        method="structured",
        sparsity=sparsity,
        layers=layers,
        parameters_before=int(before),
        parameters_after=int(after),
        note="whole hidden units removed: smaller matrices, so smaller files and less compute",
    )


def prune_unstructured(model: onnx.ModelProto, sparsity: float) -> PruneReport:
    """Zero the `sparsity` smallest-magnitude weights of every weighted layer, in place."""
    if not 0.0 <= sparsity < 1.0:
        raise OptimizeError(f"--sparsity must be in [0, 1), got {sparsity}")
    initializers = {t.name: t for t in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            name = node.input[1]
            tensor = initializers.get(name)
            if tensor is not None and len(tensor.dims) >= 2 and name not in names:
                names.append(name)
    if not names:
        raise PruneRefused(
            "found no MatMul/Gemm/Conv node with an initializer weight; nothing to prune"
        )
    layers = []
    total = zeroed = 0
    for name in names:
        weights = numpy_helper.to_array(initializers[name]).copy()
        if not np.issubdtype(weights.dtype, np.floating):
            raise PruneRefused(
                f"weight '{name}' is {weights.dtype}, not float (prune before quantizing)"
            )
        count = int(weights.size * sparsity)
        if count:
            smallest = np.argpartition(np.abs(weights).reshape(-1), count - 1)[:count]
            weights.reshape(-1)[smallest] = 0
        initializers[name].CopyFrom(numpy_helper.from_array(weights, name))
        total += weights.size
        zeroed += int(np.count_nonzero(weights == 0))
        layers.append(
            {
                "weight": name,
                "size": int(weights.size),
                "zeros": int(np.count_nonzero(weights == 0)),
            }
        )
    return PruneReport(
        method="unstructured",
        sparsity=sparsity,
        layers=layers,
        parameters_before=total,
        parameters_after=total - zeroed,
        note=(
            "weights zeroed in place: tensors keep their shapes, so dense kernels compute as much "
            "as before and are no faster, and the file is as large; only its compressed size "
            "(gzip) shrinks"
        ),
    )
