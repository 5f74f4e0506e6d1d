"""Batch-grouped convolutions rewritten into export-friendly forms on the captured graph.

StyleGAN2's fused modulated convolution (NVlabs in eval mode, rosinality's port) folds the batch
into the channels: the input ``[N, C, H, W]`` is viewed as ``[1, N*C, H, W]`` and convolved with
per-sample weights ``[N*O, C, k, k]`` using ``groups=N``. With a dynamic batch ``groups`` is
symbolic, and ONNX's ``Conv`` needs a constant ``group`` attribute (the dynamo exporter stops with
a ConversionError, TorchScript with "convolution for kernel of unknown shape").

Why here, on the captured ATen graph, and not by patching ``F.conv2d`` while exporting: every
spelling of the call (``F.conv2d``, ``torch.conv2d``, ``from torch.nn.functional import conv2d``,
a custom op's reference fallback such as NVlabs' ``conv2d_gradfix``) ends in the same
``aten.conv2d`` node, which carries its symbolic ``groups``, its module path and the nodes that
made its weight; a patch sees only the call it replaced, not how the weight was made.

For each 2-D convolution whose ``groups`` is symbolic (G):

- ``modulated``: the ``[G, O, I, kh, kw]`` tensor the weight is a view of is a product of factors,
  each shared by all samples, per input channel (``[G, 1, I, 1, 1]``, the style) or per output
  channel (``[G, O, 1, 1, 1]``, the demodulation). Then ``conv(x, W * s_in * s_out) = s_out *
  conv(x * s_in, W)``: modulate the input, one ordinary convolution with the shared weight,
  demodulate the output (StyleGAN2's non-fused path; the same sums in another order).
  A transposed convolution (StyleGAN2's upsampling layers: the per-sample weight regrouped to
  ``[G*I, O, kh, kw]`` through a transpose of the product's axes, as NVlabs' ``conv2d_resample``
  and rosinality's up layers do) is the same identity: modulate, one transposed convolution with
  the shared weight, demodulate. The permutations between the product and the convolution are
  followed, so the factors are classified on the product's own axes.
- ``shared``: every group convolves with the same kernel (a ``repeat``/``expand`` of one small
  kernel: the low-pass FIR NVlabs applies depthwise over the ``[1, N*C, H, W]`` view right after
  an upsampling layer): the groups are a batch of one ordinary convolution.
- ``batched``: any other per-sample weights; the input is unfolded into its kh*kw shifted views
  and each sample's convolution is one batched matmul (a 1x1 kernel needs no unfolding).

The rewritten graph is exported again by torch.export (so the new nodes get shapes like any
other) and compared with the original at several batch sizes before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from gendeploy.errors import RewriteError
from gendeploy.export.progress import progress

aten = torch.ops.aten
_CONV2D = {aten.conv2d.default, aten.convolution.default}
_CONVS = {
    *_CONV2D,
    aten.conv1d.default,
    aten.conv3d.default,
    aten.conv2d.padding,
    aten.conv_transpose1d.default,
    aten.conv_transpose2d.input,
    aten.conv_transpose3d.input,
}
# ops that only view or re-type the weight between the per-sample product and the convolution
_VIEWS = {
    aten.reshape.default,
    aten.view.default,
    aten._unsafe_view.default,
    aten.contiguous.default,
    aten.clone.default,
    aten.to.dtype,
    aten._to_copy.default,
}
# ops that reorder the weight's axes (followed on the 5-d per-sample product only)
_PERMUTES = {aten.transpose.int, aten.permute.default}
# ops that give every group the same kernel
_REPEATS = {aten.repeat.default, aten.expand.default}
_MUL = {aten.mul.Tensor, aten.mul.Scalar}
_DIV = {aten.div.Tensor, aten.div.Scalar}
VERIFY_ATOL = 1e-4  # the gate's FP32 tolerance


@dataclass(frozen=True)
class Rewrite:
    """One batch-grouped convolution replaced: where, and by which form."""

    layer: str  # the module path, e.g. "synthesis.b8.conv0"
    form: str  # "modulated", "shared" or "batched"
    kernel: list[int]  # [out, in, kh, kw] per sample
    transposed: bool = False  # a transposed convolution (kernel still [out, in, kh, kw])


def rewrite_batch_grouped(gm: fx.GraphModule, prefix: str = "") -> list[Rewrite]:
    """Replace every convolution with a symbolic ``groups`` in ``gm`` (in place); ``prefix`` is
    left out of the layer names (a wrapper's attribute)."""
    done: list[Rewrite] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _CONVS:
            continue
        params = _arguments(node)
        groups = params.get("groups", 1)
        if not isinstance(groups, fx.Node):
            continue  # a constant group count: an ordinary grouped convolution
        conv = _GroupedConv(node, params, groups, layer_name(node).removeprefix(prefix))
        with gm.graph.inserting_before(node):
            new, form = conv.replacement(gm.graph)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        done.append(Rewrite(conv.layer, form, conv.kernel, conv.transposed))
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


class _GroupedConv:
    """One convolution with symbolic groups: its geometry, checked, and its replacement."""

    def __init__(self, node: fx.Node, params: dict[str, Any], groups: fx.Node, layer: str):
        self.params, self.groups, self.layer = params, groups, layer
        self.weight = params["weight"]
        shape = _shape(self.weight)
        self.transposed = bool(params.get("transposed", False)) or "transpose" in str(node.target)
        if len(shape) != 4:
            raise RewriteError(unsupported_message(layer, f"{len(shape) - 2}-d convolution"))
        if node.target not in _CONV2D and node.target is not aten.conv_transpose2d.input:
            raise RewriteError(unsupported_message(layer, "convolution with padding by name"))
        if not all(isinstance(d, int) for d in shape[1:]) or not _constant_geometry(params):
            raise RewriteError(unsupported_message(layer, "convolution with symbolic kernel"))
        first, second, kh, kw = _per_sample_kernel(self.weight, groups)
        # the layout each group's weight is read in: [O, I, kh, kw], transposed [I, O, kh, kw]
        self.read = [first, second, kh, kw]
        self.kernel = [second, first, kh, kw] if self.transposed else self.read  # [O, I, kh, kw]

    def replacement(self, graph: fx.Graph) -> tuple[fx.Node, str]:
        params, groups = self.params, self.groups
        geometry = (
            _pair(params.get("stride", 1)),
            _pair(params.get("padding", 0)),
            _pair(params.get("dilation", 1)),
        )
        head = (params["input"], params.get("bias"), *geometry, groups)
        found = _modulation(self.weight, groups, self.read, self.transposed)
        if found is not None:
            shared, s_in, s_out, order = found
            if self.transposed:
                extra = _pair(params.get("output_padding", 0))
                up = (*head, shared, s_in, s_out, self.read, extra, order)
                return graph.call_function(modulated_conv_transpose2d, up), "modulated"
            plain = (*head, shared, s_in, s_out, self.read, order)
            return graph.call_function(modulated_conv2d, plain), "modulated"
        kernel = _shared_kernel(self.weight, self.read)
        if kernel is not None and not self.transposed:
            return graph.call_function(shared_conv2d, (*head, kernel, self.read)), "shared"
        if self.transposed:
            raise RewriteError(
                unsupported_message(self.layer, "transposed convolution whose weight is not a "
                                    "modulated product")
            )  # fmt: skip
        return graph.call_function(batched_conv2d, (*head, self.weight)), "batched"


def unsupported_message(layer: str, kind: str) -> str:
    return (
        f"layer {layer!r}: a {kind} with groups = batch (per-sample weights over a [1, N*C, H, W]"
        " view) cannot be exported with a dynamic batch, and gendeploy rewrites only 2-d "
        "convolutions and modulated transposed ones; options: the model's own non-fused path "
        "(--forward-kwargs, e.g. fused_modconv=false), or a static batch (--max-batch 1)"
    )


def layer_name(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _type in stack.values() if isinstance(path, str)]
    return (paths[-1] if paths else "") or "<top level>"


def verify_batches(max_batch: int) -> list[int]:
    """Where a changed graph is compared with the model: 1 (groups of one), 2 (the capture's
    batch), 3 (odd) and the largest batch the export takes."""
    top = max(max_batch, 2)
    return sorted({b for b in (1, 2, 3, top) if b <= top})


def verify(
    original: Callable[..., torch.Tensor],
    rewritten: Callable[..., torch.Tensor],
    make_inputs: Callable[[int], Sequence[torch.Tensor]],
    what: str,
    batches: Sequence[int],
) -> float:
    """Largest difference between the two at each batch size; raises a one-line ``RewriteError``
    above the FP32 tolerance or when the changed graph does not run (``what`` names the change)."""
    worst = 0.0
    label = f"checking the rewritten graph against eager at batch {', '.join(map(str, batches))}"
    with progress(label, sum(batches)) as advance:  # a StyleGAN3: ~50 s on 2 cores
        for batch in batches:
            worst = max(worst, _verify_at(original, rewritten, make_inputs, what, batch))
            advance(batch)
    return worst


def _verify_at(
    original: Callable[..., torch.Tensor],
    rewritten: Callable[..., torch.Tensor],
    make_inputs: Callable[[int], Sequence[torch.Tensor]],
    what: str,
    batch: int,
) -> float:
    inputs = make_inputs(batch)
    try:
        with torch.no_grad():
            diff = float((original(*inputs) - rewritten(*inputs)).abs().max())
    except Exception as e:  # a changed graph that fails to run is a failed change, not a crash
        detail = " ".join(str(e).split())[:160]
        raise RewriteError(
            f"{what} does not run at batch {batch} ({type(e).__name__}: {detail}); export "
            "the model's non-fused path (--forward-kwargs) or a static batch (--max-batch 1), "
            "and report this model"
        ) from None
    diff = diff if math.isfinite(diff) else math.inf
    if not diff <= VERIFY_ATOL:
        raise RewriteError(
            f"{what} changed the output by {diff:.3g} at batch {batch} (> {VERIFY_ATOL:g}); "
            "export the model's non-fused path (--forward-kwargs) or a static batch "
            "(--max-batch 1), and report this model"
        )
    return diff


def describe(rewrites: list[Rewrite]) -> str:
    """How ``verify`` names a rewrite in its errors."""
    layers = ", ".join(f"{r.layer} ({r.form})" for r in rewrites)
    return f"rewriting the batch-grouped convolutions of {layers}"


# --- the replacements: called by the rewritten graph, traced again by torch.export ------------


def modulated_conv2d(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    shared: list[Any],
    s_in: list[Any],
    s_out: list[Any],
    kernel: list[int],
    order: list[int] | None = None,
) -> torch.Tensor:
    """Modulate the input, convolve with the shared weight, demodulate the output. ``kernel``:
    [O, I, kh, kw]; ``order``: how the product's axes are read as [G, O, I, kh, kw]."""
    samples = x.reshape(groups, -1, x.shape[2], x.shape[3])  # [N, I, H, W]
    weight = _shared_weight(shared, kernel, order)  # [O, I, kh, kw]
    if s_in:
        samples = samples * _product(s_in).reshape(groups, -1, 1, 1)
    y = F.conv2d(samples, weight, None, stride, padding, dilation, 1)  # [N, O, H', W']
    return _demodulated(y, s_out, bias, groups)


def modulated_conv_transpose2d(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    shared: list[Any],
    s_in: list[Any],
    s_out: list[Any],
    kernel: list[int],
    output_padding: list[int],
    order: list[int] | None = None,
) -> torch.Tensor:
    """The same for a transposed convolution: ``kernel`` [I, O, kh, kw] as it reads its weight
    (a transposed convolution is linear in each input and output channel pair too)."""
    samples = x.reshape(groups, -1, x.shape[2], x.shape[3])  # [N, I, H, W]
    weight = _shared_weight(shared, kernel, order)  # [I, O, kh, kw]
    if s_in:
        samples = samples * _product(s_in).reshape(groups, -1, 1, 1)
    y = F.conv_transpose2d(samples, weight, None, stride, padding, output_padding, 1, dilation)
    return _demodulated(y, s_out, bias, groups)  # y: [N, O, H', W']


def shared_conv2d(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    kernel: torch.Tensor,
    read: list[int],
) -> torch.Tensor:
    """Every group convolved with the same ``kernel`` (read as [O, I, kh, kw]): the groups are a
    batch of one ordinary convolution (NVlabs' depthwise FIR over the [1, N*C, H, W] view)."""
    samples = x.reshape(-1, read[1], x.shape[2], x.shape[3])  # [B*G, I, H, W]
    y = F.conv2d(samples, kernel.expand(read), None, stride, padding, dilation, 1)
    y = y.reshape(x.shape[0], -1, y.shape[2], y.shape[3])  # [B, G*O, H', W']
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def _demodulated(
    y: torch.Tensor, s_out: list[Any], bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """[N, O, H', W'] scaled per output channel, biased, as the [1, N*O, H', W'] view."""
    if s_out:
        y = y * _product(s_out).reshape(groups, -1, 1, 1)
    if bias is not None:
        y = y + bias.reshape(groups, -1, 1, 1)
    return y.reshape(1, -1, y.shape[2], y.shape[3])


def _shared_weight(shared: list[Any], read: list[int], order: list[int] | None) -> Any:
    """The product of the shared factors, laid out as each group's convolution reads it: the
    factors broadcast onto one group of the product ([1, ...] in its own axes), permuted by
    ``order``, the group axis dropped."""
    order = order or list(range(5))
    full = [1, *read]
    own = [full[order.index(axis)] for axis in range(5)]
    return _product(shared).expand(own).permute(order).reshape(read)


def batched_conv2d(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    weight: torch.Tensor,
) -> torch.Tensor:
    """Each sample's convolution with its own weight, as one batched matmul over unfolded input."""
    samples = x.reshape(groups, -1, x.shape[2], x.shape[3])  # [N, I, H, W]
    _, channels, kh, kw = weight.shape
    w = weight.reshape(groups, -1, channels * kh * kw)  # [N, O, I*kh*kw]
    if (kh, kw) == (1, 1) and list(stride) == [1, 1] and list(padding) == [0, 0]:
        cols = samples.reshape(groups, channels, -1)  # [N, I, H*W]
        h_out, w_out = x.shape[2], x.shape[3]
    else:
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        padded = F.pad(samples, (pw, pw, ph, ph))
        h_out = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w_out = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        taps = [
            padded[:, :, i * dh : i * dh + sh * (h_out - 1) + 1 : sh,
                   j * dw : j * dw + sw * (w_out - 1) + 1 : sw]
            for i in range(kh)
            for j in range(kw)
        ]  # fmt: skip
        cols = torch.stack(taps, dim=2).reshape(groups, channels * kh * kw, -1)
    y = torch.matmul(w, cols).reshape(groups, -1, h_out, w_out)  # [N, O, H', W']
    if bias is not None:
        y = y + bias.reshape(groups, -1, 1, 1)
    return y.reshape(1, -1, h_out, w_out)


def _product(factors: list[Any]) -> Any:
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out


# --- reading the graph ------------------------------------------------------------------------


def _arguments(node: fx.Node) -> dict[str, Any]:
    schema = node.target._schema  # type: ignore[union-attr]
    found: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            found[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            found[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            found[arg.name] = arg.default_value
    return found


def _pair(value: Any) -> list[Any]:
    values = list(value) if isinstance(value, list | tuple) else [value]
    return values * 2 if len(values) == 1 else values


def _constant_geometry(params: dict[str, Any]) -> bool:
    names = ("stride", "padding", "dilation")
    return all(isinstance(v, int) for n in names for v in _pair(params.get(n, 1)))


def _shape(node: Any) -> list[Any]:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return list(val.shape) if isinstance(val, torch.Tensor) else []


def _same(a: Any, b: Any) -> bool:
    """Equal sizes: ints by value, symbolic sizes by their expression."""
    if isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt):
        return bool(a.node.expr == b.node.expr)
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return False


def _group_count(groups: fx.Node) -> Any:
    return groups.meta.get("val")


def _per_sample_kernel(weight: fx.Node, groups: fx.Node) -> tuple[int, int, int, int]:
    """(O, I, kh, kw) of each sample's weight, from the [G*O, I, kh, kw] weight's shape."""
    total, channels, kh, kw = _shape(weight)
    g = _group_count(groups)
    expr = total.node.expr / g.node.expr if isinstance(total, torch.SymInt) else None
    if expr is None or not expr.is_Integer:
        layer = layer_name(weight)
        raise RewriteError(unsupported_message(layer, "convolution whose weight is not per-sample"))
    return int(expr), channels, kh, kw


def _modulation(
    weight: fx.Node, groups: fx.Node, read: list[int], transposed: bool
) -> tuple[list, list, list, list[int]] | None:
    """(shared, per-input-channel, per-output-channel) factors of the per-sample weight and the
    order its product's axes are read in, or None when it is not such a product. ``read``: each
    group's weight as the convolution reads it ([O, I, kh, kw]; transposed [I, O, kh, kw]). The
    product, permuted by that order, must be laid out [G, *read] exactly, else its axes are not
    the convolution's (a [G, 2, 8, 3, 3] product viewed as [G*4, 4, 3, 3]: its "input channel"
    axis spans two convolution channels) and only the batched form is right."""
    found = _product_source(weight)
    if found is None:
        return None
    source, order = found
    target = _shape(source)
    if order[0] != 0 or order[3:] != [3, 4] or not _same(target[0], _group_count(groups)):
        return None
    laid = [target[axis] for axis in order]
    if not all(_same(size, want) for size, want in zip(laid[1:], read, strict=True)):
        return None
    # the product's own axes of the convolution's input and output channels
    in_axis, out_axis = (order[1], order[2]) if transposed else (order[2], order[1])
    groups_of: dict[str, list[Any]] = {"shared": [], "in": [], "out": []}
    for leaf, divides in _factors(source):
        if not isinstance(leaf, fx.Node):  # a Python number: part of the shared kernel
            groups_of["shared"].append(1.0 / leaf if divides else leaf)
            continue
        kind = _classify(_shape(leaf), target, in_axis, out_axis)
        if kind is None:
            return None
        groups_of[kind].append(leaf)
    if not any(isinstance(f, fx.Node) for f in groups_of["shared"]):
        return None  # no shared kernel: nothing for an ordinary convolution to use
    return groups_of["shared"], groups_of["in"], groups_of["out"], order


def _product_source(weight: fx.Node) -> tuple[fx.Node, list[int]] | None:
    """The 5-d per-sample tensor ``weight`` is a view of, and the order in which the
    convolution reads that tensor's axes: views (reshape, dtype) are followed at any rank, axis
    permutations (transpose, permute) on 5-d tensors, composed; a 5-d tensor merged to fewer
    dimensions and split again must come back in the same shape. None: no such tensor."""
    node: Any = weight
    order: list[int] | None = None  # None until the walk reaches a 5-d tensor
    above: list[Any] | None = None  # the 5-d shape left for fewer dimensions
    while isinstance(node, fx.Node) and node.op == "call_function":
        shape = _shape(node)
        if len(shape) == 5:
            if above is not None and not _same_shape(shape, above):
                return None
            above, order = None, order or list(range(5))
            if node.target in _PERMUTES:
                permutation = _permutation(node)
                order = [permutation[axis] for axis in order]
            elif node.target not in _VIEWS:
                return node, order
            elif len(_shape(node.args[0])) != 5:
                above = shape
        elif node.target not in _VIEWS:
            return None
        node = node.args[0]
    return None


def _permutation(node: fx.Node) -> list[int]:
    """A 5-d transpose or permute as the list of its input's axes, in its output's order."""
    args: Any = node.args
    if node.target is aten.transpose.int:
        a, b = int(args[1]) % 5, int(args[2]) % 5
        axes = list(range(5))
        axes[a], axes[b] = b, a
        return axes
    return [int(d) % 5 for d in args[1]]


def _same_shape(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


def _shared_kernel(weight: fx.Node, read: list[int]) -> fx.Node | None:
    """The one kernel every group convolves with, when the weight is a ``repeat`` of a kernel
    laid out as one group's ([O, I, kh, kw] tiled along the first axis) or an ``expand`` of a
    [1, I, kh, kw] one; None otherwise."""
    node: Any = weight
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in _VIEWS:
        node = node.args[0]
    if not (isinstance(node, fx.Node) and node.target in _REPEATS):
        return None
    args: Any = node.args
    kernel, sizes = args[0], list(args[1])
    own = _shape(kernel)
    if len(own) != 4 or len(sizes) != 4 or not all(isinstance(d, int) for d in own):
        return None
    if node.target is aten.repeat.default:
        fits = own == read and all(_same(s, 1) for s in sizes[1:])
    else:  # expand: -1 or the size itself keeps an axis
        kept = all(_same(s, -1) or _same(s, d) for s, d in zip(sizes[1:], own[1:], strict=True))
        fits = own[0] == 1 and own[1:] == read[1:] and kept
    return kernel if fits else None


def _factors(node: Any) -> list[tuple[Any, bool]]:
    """The leaves of a tree of multiplications and divisions by numbers: (leaf, divides)."""
    if isinstance(node, fx.Node) and node.op == "call_function":
        if node.target in _MUL:
            return _factors(node.args[0]) + _factors(node.args[1])
        if node.target in _DIV and not isinstance(node.args[1], fx.Node):
            return [*_factors(node.args[0]), (node.args[1], True)]
    return [(node, False)]


def _classify(shape: list[Any], target: list[Any], in_axis: int, out_axis: int) -> str | None:
    """shared / in / out for a factor broadcast onto the product ``target`` ([G, O, I, kh, kw]
    as NVlabs lays it out: ``in_axis`` 2, ``out_axis`` 1); None when it varies per sample along
    both channel axes or the kernel."""
    if len(shape) > 5:
        return None
    padded = [1] * (5 - len(shape)) + shape
    for size, full in zip(padded[1:], target[1:], strict=True):
        if not (_same(size, 1) or _same(size, full)):
            return None
    if _same(padded[0], 1):
        return "shared"
    if not _same(padded[0], target[0]) or not (_same(padded[3], 1) and _same(padded[4], 1)):
        return None
    if _same(padded[in_axis], 1):
        return "out"  # [G, O, 1, 1, 1] or a per-sample scalar [G, 1, 1, 1, 1]
    if _same(padded[out_axis], 1):
        return "in"  # [G, 1, I, 1, 1]
    return None
