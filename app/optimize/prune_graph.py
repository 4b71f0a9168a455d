"""Where a graph's hidden units can be removed: boundaries between two linear layers.

A boundary is a MatMul/Gemm with initializer weights (the producer) whose output units reach
exactly one other such layer (the consumer) through a per-unit bias and an elementwise
region: operators that compute each unit from that unit alone, with scalar constants (Relu,
Tanh, and GELU written out as Div, Erf, Add and Mul, as exported BERT-family graphs have it).
Removing a unit then removes one output column of the producer, its bias entry and one input
row of the consumer, and nothing else in the graph sees a difference.

Boundaries that cannot be rewritten safely are left alone and reported with the node that
stopped them (a residual branch, a normalization, a weight shared with another node); a graph
with no boundary at all is refused. Everything is checked before anything changes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx

from app.optimize.errors import PruneRefused

LINEAR_OPS = ("MatMul", "Gemm")
#: Operators applied to each hidden unit independently, with no per-unit parameters.
ELEMENTWISE_OPS = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus",
        "Softsign", "HardSigmoid", "HardSwish", "Gelu", "Mish", "ThresholdedRelu",
        "Identity", "Clip", "Erf", "Abs", "Neg", "Exp", "Sqrt", "Reciprocal",
    }
)  # fmt: skip
#: Two-input operators that stay per-unit when each input is a unit's value or a scalar.
BINARY_ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})
#: Operators that show a graph was quantized already (prune float graphs, then quantize).
QUANTIZED_OPS = frozenset(
    {"DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "QGemm",
     "QLinearConv", "ConvInteger"}
)  # fmt: skip


def label(node: onnx.NodeProto) -> str:
    return f"'{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"


def attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for item in node.attribute:
        if item.name == name:
            return int(onnx.helper.get_attribute_value(item))
    return default


def _subgraph_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """Names a node's subgraphs (If, Loop, Scan) read, outer-scope tensors among them."""
    for item in node.attribute:
        graphs = [item.g] if item.HasField("g") else list(item.graphs)
        for graph in graphs:
            for inner in graph.node:
                yield from inner.input
                yield from _subgraph_inputs(inner)


def _constant_size(node: onnx.NodeProto) -> int | None:
    """Elements of a Constant node's value (None for the sparse or unusual forms)."""
    for item in node.attribute:
        if item.name == "value":
            return int(np.prod(item.t.dims))
        if item.name in ("value_float", "value_int", "value_string"):
            return 1
    return None


class GraphIndex:
    """Who produces and consumes each tensor of a graph, and which tensors are constants."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.constant_sizes = {
            name: int(np.prod(t.dims))
            for name, t in self.initializers.items()
            if name not in self.graph_inputs
        }
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                size = _constant_size(node)
                if size is not None:
                    self.constant_sizes[node.output[0]] = size
            for name in {*node.input, *_subgraph_inputs(node)}:
                if name:
                    self.consumers[name].append(node)

    def is_scalar(self, name: str) -> bool:
        return self.constant_sizes.get(name) == 1

    def weight_of(self, node: onnx.NodeProto) -> str | None:
        """The initializer a MatMul/Gemm multiplies by (its B input), if it is one."""
        if node.op_type not in LINEAR_OPS or len(node.input) < 2:
            return None
        name = str(node.input[1])
        tensor = self.initializers.get(name)
        if tensor is None or len(tensor.dims) != 2:
            return None
        return name

    def private_problem(self, name: str, node: onnx.NodeProto) -> str | None:
        """Why an initializer of `node` may not be reshaped (None: only `node` sees it)."""
        users = [n for n in self.consumers[name] if n is not node]
        if users:
            others = ", ".join(label(n) for n in users[:3])
            return (
                f"cannot prune {label(node)}: its initializer '{name}' is shared with {others}; "
                "pruning it for one node would change the others"
            )
        if name in self.graph_inputs or name in self.graph_outputs:
            return (
                f"cannot prune {label(node)}: its initializer '{name}' is also a graph input "
                "or output, so a client could override or read it"
            )
        return None

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

    def units(self, node: onnx.NodeProto) -> int:
        """Output features of a linear node."""
        dims = self.initializers[node.input[1]].dims
        transposed = node.op_type == "Gemm" and attribute(node, "transB", 0)
        return int(dims[0] if transposed else dims[1])

    def output_bias(self, node: onnx.NodeProto) -> str | None:
        """The per-output bias added to a linear node's result (Gemm's C, or an Add of an
        initializer right after it), if it is private to that node."""
        units = self.units(node)
        candidates: list[tuple[str, onnx.NodeProto]] = []
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            candidates.append((node.input[2], node))
        else:
            users = self.consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add":
                add = users[0]
                other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
                candidates.append((other, add))
        for name, owner in candidates:
            tensor = self.initializers.get(name)
            if tensor is None or self.private_problem(name, owner) is not None:
                continue
            dims = list(tensor.dims)
            if dims and dims[-1] == units and all(d == 1 for d in dims[:-1]):
                return name
        return None


@dataclass
class Boundary:
    """Hidden units between `producer` and `consumer` (output features of one, input
    features of the other)."""

    producer: onnx.NodeProto
    consumer: onnx.NodeProto
    bias: str | None  # per-unit bias initializer (Gemm's C or an Add's), None if none
    tensors: list[str] = field(default_factory=list)  # hidden tensors whose shapes change

    @property
    def hidden(self) -> str:
        """The tensor the consumer multiplies: the units after their activation."""
        return str(self.consumer.input[0])


class _Skip(Exception):
    """A boundary that exists but cannot be rewritten safely; the message says why."""


def _per_unit_bias(index: GraphIndex, name: str, units: int, node: onnx.NodeProto) -> bool:
    """Whether bias `name` has one entry per unit (prune it) or broadcasts (leave it)."""
    dims = list(index.initializers[name].dims)
    if dims and dims[-1] == units and all(d == 1 for d in dims[:-1]):
        return True
    if all(d == 1 for d in dims):
        return False
    raise _Skip(
        f"cannot prune {label(node)}: its bias '{name}' has shape {dims}, not one value per "
        f"unit ([{units}]) nor a scalar"
    )


def _elementwise_step(index: GraphIndex, node: onnx.NodeProto, members: set[str]) -> bool:
    """Whether `node` computes each unit from that unit alone, given the region so far."""
    if len(node.output) != 1:
        return False
    if node.op_type in ELEMENTWISE_OPS:
        return node.input[0] in members and all(
            index.is_scalar(name) for name in node.input[1:] if name
        )
    if node.op_type in BINARY_ELEMENTWISE_OPS and len(node.input) == 2:
        inside = [name in members for name in node.input]
        return any(inside) and all(
            ok or index.is_scalar(name) for ok, name in zip(inside, node.input, strict=True)
        )
    return False


def _region(index: GraphIndex, start: str) -> tuple[list[str], set[int]]:
    """The tensors computed elementwise from `start` (itself first) and the nodes that
    compute them. A node joins once all its inputs are in the region or scalars, so GELU's
    Mul(x, 0.5 * (1 + erf(x / sqrt 2))) joins after its second branch does."""
    region, members, accepted = [start], {start}, set()
    changed = True
    while changed:
        changed = False
        for tensor in list(region):
            for user in index.consumers.get(tensor, []):
                if id(user) not in accepted and _elementwise_step(index, user, members):
                    accepted.add(id(user))
                    region.append(user.output[0])
                    members.add(user.output[0])
                    changed = True
    return region, accepted


def _follow(index: GraphIndex, producer: onnx.NodeProto) -> Boundary | None:
    """The layer fed by `producer`'s hidden units; None where its units end the network or
    meet no other linear layer; _Skip where one follows but the units are not private."""
    units = index.units(producer)
    bias = None
    if producer.op_type == "Gemm" and len(producer.input) > 2 and producer.input[2]:
        if producer.input[2] not in index.initializers:
            raise _Skip(f"cannot prune {label(producer)}: its bias is not an initializer")
        if _per_unit_bias(index, producer.input[2], units, producer):
            bias = producer.input[2]
    start = producer.output[0]
    tensors = [start]
    users = index.consumers.get(start, [])
    if bias is None and len(users) == 1 and users[0].op_type == "Add":
        add = users[0]
        other = add.input[1] if add.input[0] == start else add.input[0]
        if other in index.initializers and start not in index.graph_outputs:
            if _per_unit_bias(index, other, units, add):
                bias = other
            start = add.output[0]
            tensors.append(start)
    region, accepted = _region(index, start)
    tensors.extend(region[1:])
    members = set(region)
    exits: list[onnx.NodeProto] = []
    others: list[tuple[str, onnx.NodeProto]] = []
    for tensor in region:
        for user in index.consumers.get(tensor, []):
            if id(user) in accepted:
                continue
            if (
                index.weight_of(user) is not None
                and user.input[0] == tensor
                and user.input[1] not in members
                and not (user.op_type == "Gemm" and attribute(user, "transA", 0))
            ):
                exits.append(user)
            else:
                others.append((tensor, user))
    exposed = [t for t in region if t in index.graph_outputs]
    if not exits:
        blocking = [user for _, user in others if index.reaches_linear(user)]
        if blocking:
            raise _Skip(
                f"cannot prune the units of {label(producer)}: {label(blocking[0])} sits between "
                "it and the next layer and is not an elementwise activation or per-unit bias, so "
                "removing units could change what it computes"
            )
        return None  # the units are the model's outputs, or end in something that is not
    if others or exposed or len(exits) > 1:
        blocked = [t for t, _ in others] + exposed + [str(e.input[0]) for e in exits[1:]]
        tensor = blocked[0]
        feeds = [e for e in exits if e.input[0] == tensor] + [u for t, u in others if t == tensor]
        also = " and is a graph output" if tensor in index.graph_outputs else ""
        raise _Skip(
            f"cannot prune the units of {label(producer)}: tensor '{tensor}' feeds "
            f"{', '.join(label(u) for u in feeds)}{also}; a unit removed for one would change "
            "the others"
        )
    return Boundary(producer=producer, consumer=exits[0], bias=bias, tensors=tensors)


def _check_private(index: GraphIndex, boundary: Boundary) -> None:
    for node in (boundary.producer, boundary.consumer):
        problem = index.private_problem(node.input[1], node)
        if problem:
            raise _Skip(problem)
    if boundary.bias is not None:
        owner = index.consumers[boundary.bias][0]
        problem = index.private_problem(boundary.bias, owner)
        if problem:
            raise _Skip(problem)


def find_boundaries(model: onnx.ModelProto) -> tuple[GraphIndex, list[Boundary], list[str]]:
    """Every boundary that can be pruned, in graph order, and why the others cannot be;
    PruneRefused when there is none."""
    index = GraphIndex(model.graph)
    boundaries: list[Boundary] = []
    skipped: list[str] = []
    for node in model.graph.node:
        if index.weight_of(node) is None:
            continue
        if node.op_type == "Gemm" and attribute(node, "transA", 0):
            continue  # its output is still [M, N]; only its role as a consumer is limited
        try:
            boundary = _follow(index, node)
            if boundary is not None:
                _check_private(index, boundary)
                boundaries.append(boundary)
        except _Skip as skip:
            skipped.append(str(skip))
    if not boundaries:
        raise PruneRefused(_refusal(model, index, skipped))
    return index, boundaries, skipped


def _refusal(model: onnx.ModelProto, index: GraphIndex, skipped: list[str]) -> str:
    if skipped:
        return "; ".join(skipped)
    linear = [n for n in model.graph.node if n.op_type in LINEAR_OPS]
    weightless = [n for n in linear if index.weight_of(n) is None]
    quantized = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    hint = ""
    if quantized:
        hint = (
            f"; the model is already quantized ({label(quantized[0])}): prune the float "
            "model, then quantize the pruned one"
        )
    elif weightless:
        hint = (
            f"; {label(weightless[0])} takes its weight from a computed tensor, not an initializer"
        )
    return (
        "cannot prune this graph: found no two MatMul/Gemm layers with initializer weights "
        "joined only by a bias Add and elementwise operators, so there are no hidden units to "
        f"remove{hint}"
    )
