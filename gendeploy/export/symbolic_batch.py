"""A graph with a symbolic batch for models that turn the batch size into a Python int.

NVlabs' ``modulated_conv2d`` does ``batch_size = int(batch_size)`` before its grouped
convolution (StyleGAN2's fused path; StyleGAN3's, which has no other), so ``torch.export`` cannot
keep the batch symbolic: it specializes it to the example's batch. Captured instead at two static
batch sizes, the two graphs differ only in the integers the batch made (``groups``, the sizes of
``reshape(batch, ...)``): each integer that is ``2k`` in one and ``3k`` in the other is ``k *
batch``. Replaced by ``k * z.shape[0]``, they give one graph with a symbolic batch, which
torch.export captures again; its grouped convolutions then have symbolic groups and are rewritten
like any (``rewrite.py``). Whether the result equals the model is checked at several batch sizes
before anything is written (``rewrite.verify``), batch 1 among them: the graph was read at 2 and 3.

A model whose graph differs otherwise between the two batches (a Python branch on the batch size,
an integer not proportional to it) cannot be generalized; the error names its batch-grouped
convolutions, found by running it once (``batch_grouped_layers``), and the options.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

from gendeploy.errors import BatchConstantError
from gendeploy.export.signature import WRAPPED

BATCHES = (2, 3)  # the two static captures; their integers tell which ones the batch made
_GUARDS = "_guards_fn"  # the check torch.export inserts that inputs have the captured shapes
_CONVOLUTION = torch.ops.aten.convolution.default


def generalized_graph(
    module: nn.Module, make_inputs: Callable[[int], Sequence[torch.Tensor]]
) -> fx.GraphModule:
    """The model's graph captured at batch 2 with every batch-made integer made symbolic."""
    graphs = []
    for size in BATCHES:
        try:
            graphs.append(torch.export.export(module, tuple(make_inputs(size)), strict=False))
        except Exception as e:
            raise BatchConstantError(
                specialized_message(
                    module, make_inputs, f"capturing at a static batch failed too ({_short(e)})"
                )
            ) from None
    gm, other = graphs[0].module(), graphs[1].module()
    nodes, others = list(gm.graph.nodes), list(other.graph.nodes)
    same = len(nodes) == len(others) and all(
        (a.op, a.target) == (b.op, b.target) for a, b in zip(nodes, others, strict=True)
    )
    if not same:
        raise BatchConstantError(
            specialized_message(
                module, make_inputs, "its graph differs between batch 2 and 3 (a Python branch on "
                "the batch size)"
            )
        )  # fmt: skip
    first = next(n for n in nodes if n.op == "placeholder")
    last = [n for n in nodes if n.op == "placeholder"][-1]
    with gm.graph.inserting_after(last):
        batch = gm.graph.call_function(torch.ops.aten.sym_size.int, (first, 0))
    made = _Symbolic(gm.graph, batch)
    for node, twin in zip(nodes, others, strict=True):
        if node.op == "call_module" and node.target == _GUARDS:
            gm.graph.erase_node(node)  # it checks the static batch 2
            continue
        try:
            node.args = made(node.args, twin.args)
            node.kwargs = made(node.kwargs, twin.kwargs)
        except ValueError as e:
            raise BatchConstantError(
                specialized_message(module, make_inputs, f"{e} at {node.name}")
            ) from None
    if not made.count:
        raise BatchConstantError(
            specialized_message(module, make_inputs, "no integer in its graph follows the batch")
        )
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


class _Symbolic:
    """Replaces integers that follow the batch (2k at batch 2, 3k at batch 3) by ``k * batch``."""

    def __init__(self, graph: fx.Graph, batch: fx.Node) -> None:
        self.graph, self.batch, self.count = graph, batch, 0

    def __call__(self, value: Any, twin: Any) -> Any:
        if isinstance(value, list | tuple):
            if not isinstance(twin, list | tuple) or len(value) != len(twin):
                raise ValueError("a list of another length")
            return type(value)(self(v, t) for v, t in zip(value, twin, strict=True))
        if isinstance(value, dict):
            return {k: self(v, twin[k]) for k, v in value.items()}
        if isinstance(value, fx.Node):
            return value
        if value == twin and type(value) is type(twin):
            return value
        if type(value) is not int or type(twin) is not int or value * 3 != twin * 2 or value % 2:
            raise ValueError(f"a value that is {value!r} at batch 2 and {twin!r} at batch 3")
        self.count += 1
        k = value // 2
        if k == 1:
            return self.batch
        with self.graph.inserting_after(self.batch):
            return self.graph.call_function(operator.mul, (self.batch, k))


def specialized_message(
    module: nn.Module, make_inputs: Callable[[int], Sequence[torch.Tensor]], why: str
) -> str:
    """One line: what the model does, where its batch-grouped convolutions are, what to do."""
    layers = batch_grouped_layers(module, make_inputs(2))
    where = (
        f"its batch-grouped convolutions ({', '.join(repr(n) for n in layers[:4])}"
        f"{', ...' if len(layers) > 4 else ''}: groups = batch over a [1, N*C, H, W] view) "
        if layers
        else ""
    )
    return (
        "the model turns the batch size into a constant while it is traced (int(x.shape[0]), a "
        f"Python branch or assert on it), and gendeploy cannot make it symbolic again: {why}; "
        f"{where}cannot be exported with a dynamic batch as written; options: the model's own "
        "non-fused path (NVlabs: --forward-kwargs fused_modconv=false), keep the batch symbolic "
        "(x.shape[0], no int()), or a static batch (--max-batch 1)"
    )


def batch_grouped_layers(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[str]:
    """Module paths of the convolutions that run with groups = batch over a batch-1 input when
    ``module`` runs (eagerly) on ``inputs``; [] when it does not run."""
    batch = inputs[0].shape[0]
    stack: list[str] = []
    found: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is _CONVOLUTION and len(args) > 8:
                x, groups = args[0], args[8]
                if groups == batch and x.shape[0] == 1 and batch > 1:
                    layer = stack[-1] if stack and stack[-1] != WRAPPED else ""
                    layer = layer.removeprefix(f"{WRAPPED}.")
                    if (layer or "<top level>") not in found:
                        found.append(layer or "<top level>")
            return func(*args, **(kwargs or {}))

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: stack.append(name)

    def leave(*_: Any) -> None:
        stack.pop()

    handles = []
    for name, sub in module.named_modules():
        handles.append(sub.register_forward_pre_hook(enter(name)))
        handles.append(sub.register_forward_hook(leave, always_call=True))
    try:
        with torch.no_grad(), Watch():
            module(*inputs)
    except Exception:  # a diagnosis only: a model that does not run eagerly names no layer
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
