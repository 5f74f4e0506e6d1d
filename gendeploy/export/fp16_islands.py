"""FP16 where it is safe: FP32 islands around values FP16 cannot hold, by structure and measure.

FP16's largest finite value is 65504 and its step near 16384 is already 16. Generators overflow it
in a few places: a demodulation's sum of squares (a modulated weight above 256 squares past the
limit), activations that grow through unnormalised layers, and rescalings by large gains. Op types
known to be sensitive stay FP32 anyway (``onnx_graph.FP32_OPS``). On top of those, by structure:
every normalization chain (a reduction, then the ops up to a square root or reciprocal, and the
multiply or divide that applies it: StyleGAN2's demodulation, pixel norm), with the square that
feeds its reduction, whatever values the gate happened to see there. And by measurement:
``convert`` runs the FP32 model on the gate's inputs (psi at the model's default, 0.5, 0.75, 1 and
both ends of the served range) plus z at twice its spread (``range_feeds``), finds every node
whose output exceeds a limit, and keeps those nodes and every node that reads such a value in
FP32 (an island: FP16 casts at its edges only). The gate then decides (``accept``: NaN/Inf,
values, PSNR, batch invariance, and any other check plugged in there); if it refuses, the islands
grow (a lower limit) before giving up.

The gate sees FP16 overflow only where values are really stored in FP16: ONNX Runtime's CPU
provider computes FP16 nodes in FP32 and drops the casts between them, so an overflow never shows
there. ``emulate_fp16_storage`` makes every FP16 value a stored one (an FP32 graph that casts
each such value to FP16 and back, casts ONNX Runtime keeps): FP32 arithmetic, FP16 storage, as
FP16 engines run, and a value past 65504 becomes inf as it would on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gendeploy.errors import (
    NonFiniteError,
    PrecisionOverflowError,
    ValidationError,
    restated,
)
from gendeploy.export import onnx_graph
from gendeploy.export.onnx_graph import node_layer
from gendeploy.runtime.base import Feeds

# Values above the first limit stay FP32 (4x headroom under 65504 for inputs the gate did not
# try); if the gate still refuses, everything above the second (FP16's step there is 0.5).
LIMITS = (2.0**14, 2.0**10)
TAIL_Z = 2.0  # range_feeds: z scaled by this stands for latents from the tails clients may send
_REDUCTIONS = {"ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMean"}
# ops a normalization passes through between its reduction and where it is applied
_NORM_CHAIN = {
    "Add", "Sqrt", "Reciprocal", "Pow", "Div", "Max", "Clip",
    "Reshape", "Unsqueeze", "Squeeze", "Expand", "Cast", "Identity",
}  # fmt: skip
_ROOTS = {"Sqrt", "Reciprocal", "Pow"}  # what makes a reduction a normalization
Accept = Callable[[onnx.ModelProto], "Refusal | None"]  # None: the gate passed it


@dataclass(frozen=True)
class Refusal:
    """Why the gate refused a candidate FP16 model: what the tensor gate or the quality gate
    raised (``errors.py``)."""

    error: ValidationError

    @property
    def overflow(self) -> bool:
        """NaN/Inf appeared: a value passed FP16's range (else it lost precision)."""
        return isinstance(self.error, (NonFiniteError, PrecisionOverflowError))


@dataclass(frozen=True)
class Island:
    """One node kept in FP32."""

    node: str  # the ONNX node's name
    op: str  # its op type
    layer: str  # the torch module it came from ("" when the exporter did not record it)
    max_abs: float  # the largest |value| it read or wrote on the range feeds
    reason: str = "range"  # "range": measured beyond a limit; "normalization": by structure


def convert(
    fp32: onnx.ModelProto, feeds: list[Feeds], accept: Accept
) -> tuple[onnx.ModelProto, list[Island]]:
    """The FP16 model the gate accepts, and the nodes kept in FP32 (beyond ``FP32_OPS``)."""
    model = _named(fp32)
    ranges = value_ranges(model, feeds)
    structural = [
        Island(n.name, n.op_type, node_layer(n), _touched(n, ranges), "normalization")
        for n in normalization_chains(model)
    ]
    refusal: Refusal | None = None
    chosen: list[Island] = []
    for limit in LIMITS:
        measured = islands(model, ranges, limit)
        by_value = {i.node for i in measured}
        chosen = measured + [i for i in structural if i.node not in by_value]
        fp16 = fold_cast_pairs(onnx_graph.convert_fp16(model, [i.node for i in chosen]))
        refusal = accept(fp16)
        if refusal is None:
            return fp16, chosen
    assert refusal is not None
    kept = f"{len(chosen)} nodes kept in FP32 (normalizations, values past {LIMITS[-1]:g})"
    if refusal.overflow:
        cause = f"FP16 overflows (NaN/Inf) even with {kept}"
    else:
        cause = f"FP16 loses precision (no value overflowed; {kept} did not help)"
    raise restated(refusal.error, f"{cause}: {refusal.error}")  # the refusing check's own class


def range_feeds(feeds: list[Feeds]) -> list[Feeds]:
    """What value ranges are measured on: the gate's inputs (which mix psi up to both ends of the
    served range) and the first of them with z scaled by ``TAIL_Z``; an image model's test images
    and the first of them at full contrast (every pixel pushed to -1 or 1: the largest values a
    served image can hold)."""
    if "z" not in feeds[0]:
        extreme = {k: np.where(v < 0, -1.0, 1.0).astype(v.dtype) for k, v in feeds[0].items()}
        return [*feeds, extreme]
    return [*feeds, {**feeds[0], "z": feeds[0]["z"] * np.float32(TAIL_Z)}]


def normalization_chains(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of every reduction -> (add eps) -> sqrt / reciprocal -> multiply chain, with the
    square feeding the reduction: a sum of squares overflows FP16 long before the values squared
    do, and its inverse square root is applied to values that are themselves fine in FP16."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, onnx.NodeProto] = {}
    for reduce in (n for n in model.graph.node if n.op_type in _REDUCTIONS):
        chain, applied, rooted = [reduce], [], False
        frontier = list(reduce.output)
        for _ in range(8):  # a normalization is a few ops long; stop before wandering the graph
            step = []
            for value in frontier:
                for user in consumers.get(value, []):
                    divides = user.op_type == "Div" and user.input[1] == value
                    if user.op_type == "Mul" or divides:
                        applied.append(user)
                        rooted |= divides
                    elif user.op_type in _NORM_CHAIN:
                        chain.append(user)
                        rooted |= user.op_type in _ROOTS
                        step += list(user.output)
            frontier = step
        if not (rooted and applied):
            continue  # a mean or a sum used as such, not a normalization
        square = producer.get(reduce.input[0]) if reduce.input else None
        if square is not None and (
            square.op_type == "Pow"
            or (square.op_type == "Mul" and square.input[0] == square.input[1])
        ):
            chain.append(square)
        found.update({n.name: n for n in [*chain, *applied]})
    return list(found.values())


def value_ranges(model: onnx.ModelProto, feeds: list[Feeds]) -> dict[str, float]:
    """Largest |value| of every float tensor (initializers and node outputs) on ``feeds``."""
    import onnxruntime as ort

    ranges = {
        init.name: _max_abs(numpy_helper.to_array(init))
        for init in model.graph.initializer
        if init.data_type == TensorProto.FLOAT
    }
    inferred = onnx.shape_inference.infer_shapes(model)
    float_values = {
        v.name
        for v in [*inferred.graph.value_info, *inferred.graph.output]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    names = [o for n in model.graph.node for o in n.output if o in float_values]
    for name in names:
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    wanted = {i.name for i in session.get_inputs()}
    for f in feeds:
        values = session.run(names, {k: v for k, v in f.items() if k in wanted})
        for name, value in zip(names, values, strict=True):
            ranges[name] = max(ranges.get(name, 0.0), _max_abs(value))
    return ranges


def islands(model: onnx.ModelProto, ranges: dict[str, float], limit: float) -> list[Island]:
    """Nodes that write or read a value above ``limit``."""
    return [
        Island(node.name, node.op_type, node_layer(node), _touched(node, ranges))
        for node in model.graph.node
        if _touched(node, ranges) > limit
    ]


def _touched(node: onnx.NodeProto, ranges: dict[str, float]) -> float:
    return max((ranges.get(t, 0.0) for t in [*node.input, *node.output]), default=0.0)


def fold_cast_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop every FP32 -> FP16 -> FP32 round trip: the converter casts a blocked node's output to
    FP16 even when all its readers are FP32 (with more than one reader it keeps the pair), which
    would let a large value overflow between two FP32 nodes."""
    graph = model.graph
    to16 = {
        n.output[0]: n
        for n in graph.node
        if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT16
    }
    rename: dict[str, str] = {}
    # by position: protobuf's wrappers are made on access and freed after it (upb), so id() of
    # one taken while iterating may be another node's the next time; a node's index does not move
    dropped: set[int] = set()
    for i, node in enumerate(graph.node):
        if node.op_type == "Cast" and _cast_to(node) == TensorProto.FLOAT and node.input[0] in to16:
            rename[node.output[0]] = to16[node.input[0]].input[0]
            dropped.add(i)
    if not rename:
        return model
    outputs = {o.name for o in graph.output}
    kept = []
    for i, node in enumerate(graph.node):
        if i in dropped and node.output[0] not in outputs:
            continue
        if i in dropped:  # a graph output keeps its name: the cast becomes an Identity
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = rename.pop(node.output[0])
        node.input[:] = [rename.get(name, name) for name in node.input]
        kept.append(node)
    used = {name for n in kept for name in n.input} | outputs
    kept = [
        n for n in kept if n.op_type != "Cast" or n.output[0] not in to16 or n.output[0] in used
    ]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def emulate_fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 copy of an FP16 model that rounds to FP16 wherever the FP16 model stores a value:
    FP16 weights and constants widened exactly, each FP16 node computed in FP32 and its output
    cast to FLOAT16 and back. ONNX Runtime's CPU provider computes FP16 nodes in FP32 and drops
    the casts it inserts between them (a chain such as (x + 1000) - 1000 never rounded), but it
    keeps a model's own casts at every optimization level, so this copy runs optimized."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _round_where_stored(out.graph, _value_types(inferred.graph))
    return out


# ops that only move or select values: their FP16 outputs are FP16 inputs, already rounded
_MOVES = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
          "Slice", "Gather", "Expand", "Tile", "Pad", "Constant", "Shape", "Size"}  # fmt: skip


def _value_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every typed value in ``graph`` and its subgraphs (names are unique)."""
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*graph.input, *graph.value_info, *graph.output]
    }
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]:
                types.update(_value_types(sub))
    return types


def _round_where_stored(graph: onnx.GraphProto, types: dict[str, int]) -> None:
    """``emulate_fp16_storage`` on one graph, in place (subgraphs too)."""
    for tensor in graph.initializer:
        _widen(tensor)
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    del graph.value_info[:]  # the FP16 types recorded there no longer hold
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.HasField("t"):
                _widen(attribute.t)
            if attribute.name in ("to", "dtype") and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.FLOAT  # computed in FP32, rounded below
            for sub in [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]:
                _round_where_stored(sub, types)
        if node.op_type in _MOVES:
            continue
        for i, name in enumerate(node.output):
            if types.get(name) != TensorProto.FLOAT16:
                continue
            node.output[i] = f"{name}__computed"
            nodes += [
                helper.make_node("Cast", [node.output[i]], [f"{name}__fp16"],
                                 to=TensorProto.FLOAT16, name=f"{name}__stored"),
                helper.make_node("Cast", [f"{name}__fp16"], [name],
                                 to=TensorProto.FLOAT, name=f"{name}__read"),
            ]  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)


def _widen(tensor: onnx.TensorProto) -> None:
    """An FP16 tensor as the FP32 tensor of the same values (exact), in place."""
    if tensor.data_type == TensorProto.FLOAT16:
        tensor.CopyFrom(numpy_helper.from_array(
            numpy_helper.to_array(tensor).astype(np.float32), tensor.name
        ))  # fmt: skip


def _cast_to(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "to"), -1)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every node has a unique name (the converter blocks nodes by name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return out


def _max_abs(value: np.ndarray) -> float:
    if value.size == 0 or not np.issubdtype(value.dtype, np.floating):
        return 0.0
    return float(np.nan_to_num(np.abs(value), nan=np.inf).max())
