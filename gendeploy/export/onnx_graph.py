"""torch -> ONNX, the uint8 post-processing head, and the FP16 conversion.

Every function leaves a single self-contained ``.onnx`` file (no external ``.data`` sidecar) that
passes ``onnx.checker`` with ``full_check=True``. The batch axis is dynamic.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import itertools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from gendeploy.errors import (
    BatchConstantError,
    BatchGroupedConvError,
    ExporterError,
    ExportError,
    OnnxCheckError,
    RandomOpError,
)
from gendeploy.export import symbolic_batch
from gendeploy.export.rewrite import (
    Rewrite,
    describe,
    rewrite_batch_grouped,
    verify,
    verify_batches,
)
from gendeploy.export.signature import WRAPPED, ServedGenerator
from gendeploy.manifest import Interface, TensorSpec

OUTPUT = "images"
# ops that draw random numbers: no published graph holds one (``refuse_random_ops``)
RANDOM_OPS = (
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
)
_FLOAT_OUTPUT = "images_float"

# Ops kept in FP32 in the FP16 model. Each costs two Casts; each is here because FP16 breaks it:
FP32_OPS = [
    # Normalizations compute a mean and a variance over many elements: the sum of squares
    # overflows FP16 (max 65504) on large feature maps and E[x^2]-E[x]^2 cancels catastrophically
    # with 11 bits of mantissa. InstanceNorm generators showed visible banding without this.
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
    # Long reductions accumulate rounding error and overflow for the same reason (manual norms,
    # PixelNorm, minibatch statistics are written with these).
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    # x^2 and 1/sqrt(x + eps): eps like 1e-8 underflows FP16 (smallest subnormal 6e-8), so
    # rsqrt(0 + eps) becomes inf.
    "Pow",
    "Sqrt",
    "Reciprocal",
    # exp overflows FP16 above ~11; softmax attention logits routinely exceed that.
    "Exp",
    "Softmax",
    "LogSoftmax",
]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs torchvision notes and deprecation chatter unrelated to our model; failed
    captures log the graph they stopped in (symbolic_shapes), which the one-line error replaces."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),  # torch.export prints failed graphs there
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _silenced_descriptors() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null: the TorchScript exporter prints its IR from C++ when
    it fails, past Python's ``sys.stdout``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


@dataclass(frozen=True)
class Exported:
    """How ``fp32.onnx`` was made."""

    exporter: str  # "dynamo" or "torchscript"
    rewrites: list[Rewrite] = field(default_factory=list)  # batch-grouped convolutions replaced
    static_batch: bool = False  # exported at batch 1 only (--max-batch 1)
    symbolic_batch: bool = False  # the model made the batch a constant; gendeploy undid it


def sample_inputs(specs: list[TensorSpec], batch: int) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs for ``specs`` at ``batch`` (values only steer tracing)."""
    gen = torch.Generator().manual_seed(0)
    out: list[torch.Tensor] = []
    for spec in specs:
        if spec.dtype == "int64":
            top = (spec.value_range or [0, 0])[1] + 1
            out.append(torch.arange(batch, dtype=torch.int64) % max(top, 1))
        elif spec.name == "truncation":
            out.append(torch.full((batch, *spec.shape[1:]), 0.7))
        else:
            out.append(torch.randn(batch, *spec.shape[1:], generator=gen))
    return tuple(out)


def _disk_error(e: BaseException | None) -> OSError | None:
    """The file-system error behind ``e`` (the exporter may wrap it), if any."""
    while e is not None:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e = e.__cause__ or e.__context__
    return None


def export_fp32(
    module: nn.Module,
    path: Path,
    latent_dim: int,
    num_classes: int,
    max_batch: int,
    inputs: list[TensorSpec] | None = None,
) -> Exported:
    """Export ``module`` to ``path`` with a dynamic batch (a static batch 1 when ``max_batch`` is
    1); batch-grouped convolutions are rewritten first (``rewrite.py``).

    ``inputs``: the served inputs in ``forward``'s order (default: ``z`` and, if conditional,
    ``labels``).
    """
    specs = inputs or Interface().input_specs(latent_dim, num_classes)

    def make_inputs(batch: int) -> tuple[torch.Tensor, ...]:
        return sample_inputs(specs, batch)

    static = max_batch == 1
    args = make_inputs(1 if static else 2)
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    dynamic = None if static else _dynamic_shapes(module, len(args), batch)
    errors: list[str] = []  # each exporter's failure, in the order they were tried
    rewrites: list[Rewrite] = []
    with _quiet_exporter():
        target: Any = module
        captured, generalized = _capture(module, args, dynamic, make_inputs, batch, errors)
        if captured is not None:
            target, rewrites = _rewritten(module, captured, make_inputs, generalized, max_batch)
        onnx_export = _OnnxExport(module, args, path, [s.name for s in specs], dynamic, batch)
        exporter = onnx_export.run(target, errors, bool(rewrites) or generalized, make_inputs)
    sidecar = path.with_name(path.name + ".data")
    if sidecar.exists():
        raise ExporterError(f"the exporter wrote external data {sidecar.name}; expected one file")
    check(path)
    return Exported(exporter, rewrites, static, generalized)


def _capture(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic: Any,
    make_inputs: Callable[[int], tuple[torch.Tensor, ...]],
    batch: Any,
    errors: list[str],
) -> tuple[torch.export.ExportedProgram | None, bool]:
    """torch.export's capture with a dynamic batch, and whether the batch had to be made symbolic
    again (the model made it a constant: ``_capture_symbolic_batch``); None when torch.export
    fails otherwise (torch.onnx's own strategies are tried next)."""
    try:
        return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False), False
    except Exception as e:
        if not _batch_made_constant(e):
            errors.append(f"torch.export: {_first_line(e)}")
            return None, False
    return _capture_symbolic_batch(module, make_inputs, args, batch), True


def _batch_made_constant(e: Exception) -> bool:
    """torch.export refused the dynamic batch: a constraint violation, and the batch is the only
    dimension gendeploy declares dynamic (the model made it a constant, e.g. int(x.shape[0]))."""
    from torch._dynamo.exc import UserError, UserErrorType

    return isinstance(e, UserError) and e.error_type is UserErrorType.CONSTRAINT_VIOLATION


def _rewritten(
    module: nn.Module,
    captured: torch.export.ExportedProgram,
    make_inputs: Callable[[int], tuple[torch.Tensor, ...]],
    generalized: bool,
    max_batch: int,
) -> tuple[Any, list[Rewrite]]:
    """What to export from a capture: the program itself, or its graph with the batch-grouped
    convolutions rewritten (and the batch made symbolic again), verified against the module."""
    graph = captured.module()
    prefix = f"{WRAPPED}." if isinstance(module, ServedGenerator) else ""
    rewrites = rewrite_batch_grouped(graph, prefix)
    if not (rewrites or generalized):
        return captured, rewrites
    changes = ["making the batch symbolic again"] if generalized else []
    changes += [describe(rewrites)] if rewrites else []
    verify(module, graph, make_inputs, " and ".join(changes), verify_batches(max_batch))
    return graph, rewrites


@dataclass
class _OnnxExport:
    """torch.onnx.export of one module to ``path`` with the export's names and batch axis."""

    module: nn.Module
    args: tuple[torch.Tensor, ...]
    path: Path
    names: list[str]
    dynamic: Any  # None: a static batch
    batch: Any

    def run(
        self,
        target: Any,
        errors: list[str],
        changed: bool,
        make_inputs: Callable[[int], tuple[torch.Tensor, ...]],
    ) -> str:
        """The dynamo exporter on ``target``, else TorchScript on the module itself (unless the
        graph was changed: only the dynamo path carries the change); the exporter's name."""
        try:
            torch.onnx.export(
                target,
                self.args,
                str(self.path),
                input_names=self.names,
                output_names=[OUTPUT],
                dynamic_shapes=_target_shapes(target, self.dynamic, len(self.args), self.batch),
                external_data=False,
                dynamo=True,
            )
            return "dynamo"
        except Exception as e:  # the dynamo exporter rejects some Python control flow
            disk = _disk_error(e)
            if disk is not None:  # no other exporter can write to a full or read-only disk
                raise OSError(disk.errno, disk.strerror, str(self.path)) from None
            errors.append(f"dynamo: {_first_line(e)}")
        if changed:
            raise ExporterError(f"torch.onnx.export failed: {'; '.join(errors)}")
        try:
            self._torchscript()
            return "torchscript"
        except Exception as e:
            layers = symbolic_batch.batch_grouped_layers(self.module, make_inputs(2))
            if layers:  # TorchScript cannot convolve with a kernel of unknown shape
                raise BatchGroupedConvError(_grouped_message(layers, errors[0])) from None
            errors.append(f"torchscript: {_first_line(e)}")
        raise ExporterError(f"torch.onnx.export failed: {'; '.join(errors)}")

    def _torchscript(self) -> None:
        axes = None if self.dynamic is None else {n: {0: "batch"} for n in [*self.names, OUTPUT]}
        with _silenced_descriptors():
            torch.onnx.export(
                self.module,
                self.args,
                str(self.path),
                input_names=self.names,
                output_names=[OUTPUT],
                dynamic_axes=axes,
                dynamo=False,
            )


def _target_shapes(target: Any, dynamic: Any, n: int, batch: Any) -> Any:
    """What torch.onnx.export needs: nothing for a captured program (its shapes are in it); the
    rewritten graph's own signature (flat inputs) for a rewritten one."""
    if isinstance(target, torch.export.ExportedProgram) or dynamic is None:
        return None
    return _dynamic_shapes(target, n, batch)


def _dynamic_shapes(module: nn.Module, n: int, batch: Any) -> tuple[Any, ...]:
    """Axis 0 of every input is the batch; a ``forward(*inputs)`` takes them as one tuple."""
    each = tuple({0: batch} for _ in range(n))
    params = list(inspect.signature(module.forward).parameters.values())
    if len(params) == 1 and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        return (each,)
    return each


def _capture_symbolic_batch(
    module: nn.Module,
    make_inputs: Callable[[int], tuple[torch.Tensor, ...]],
    args: tuple[torch.Tensor, ...],
    batch: Any,
) -> torch.export.ExportedProgram:
    """The model's graph with its batch made symbolic again (``symbolic_batch.py``), captured
    with a dynamic batch; a one-line ``BatchConstantError`` when that cannot be done."""
    general = symbolic_batch.generalized_graph(module, make_inputs)
    try:
        return torch.export.export(
            general, args, dynamic_shapes=_dynamic_shapes(general, len(args), batch), strict=False
        )
    except Exception as e:
        why = f"its graph made symbolic does not capture ({_first_line(e)})"
        raise BatchConstantError(
            symbolic_batch.specialized_message(module, make_inputs, why)
        ) from None


def _grouped_message(layers: list[str], why: str) -> str:
    """A batch-grouped convolution (TorchScript's "convolution for kernel of unknown shape"),
    which only a torch.export capture lets gendeploy rewrite."""
    shown = ", ".join(repr(n) for n in layers[:4]) + (", ..." if len(layers) > 4 else "")
    where = f"layer{'s' if len(layers) > 1 else ''} {shown}: "
    return (
        f"{where}a convolution with groups = batch (per-sample weights over a [1, N*C, H, W] "
        "view) cannot be exported with a dynamic batch as written, and gendeploy rewrites it only "
        f"on a torch.export capture, which failed ({why}); options: make torch.export succeed "
        "(e.g. torch.where instead of a Python branch on a tensor's value), the model's own "
        "non-fused path (--forward-kwargs, e.g. fused_modconv=false), or a static batch "
        "(--max-batch 1)"
    )


def add_uint8_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """Append (x + 1) * 127.5, round half to even, clip to [0, 255], NCHW -> NHWC, cast to uint8.

    Works on any model whose float32 output is ``images`` (the FP16 model keeps FP32 outputs), so
    the head always computes in FP32: FP16 cannot hold 255.5 - 0.5 steps exactly enough to round.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    old = next(o for o in graph.output if o.name == OUTPUT)
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    if old.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4:
        raise ExportError("the uint8 head needs a float32 NCHW output named 'images'")
    for node in graph.node:
        node.output[:] = [_FLOAT_OUTPUT if o == OUTPUT else o for o in node.output]
    graph.output.remove(old)
    consts = {
        "u8_one": 1.0,
        "u8_scale": 127.5,
        "u8_min": 0.0,
        "u8_max": 255.0,
    }
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(_scalar(value), name))
    graph.node.extend(
        [
            helper.make_node("Add", [_FLOAT_OUTPUT, "u8_one"], ["u8_shifted"], name="u8_add"),
            helper.make_node("Mul", ["u8_shifted", "u8_scale"], ["u8_scaled"], name="u8_mul"),
            helper.make_node("Round", ["u8_scaled"], ["u8_rounded"], name="u8_round"),
            helper.make_node(
                "Clip", ["u8_rounded", "u8_min", "u8_max"], ["u8_clipped"], name="u8_clip"
            ),
            helper.make_node(
                "Transpose", ["u8_clipped"], ["u8_nhwc"], perm=[0, 2, 3, 1], name="u8_nhwc"
            ),
            # Cast last: TensorRT allows UINT8 tensors only at the network's edges, via a Cast.
            helper.make_node("Cast", ["u8_nhwc"], [OUTPUT], to=TensorProto.UINT8, name="u8_cast"),
        ]
    )
    n, c, h, w = dims
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.UINT8, [n, h, w, c]))
    return out


def convert_fp16(model: onnx.ModelProto, fp32_nodes: list[str] | None = None) -> onnx.ModelProto:
    """FP16 weights and arithmetic, FP32 inputs and outputs, ``FP32_OPS`` and the nodes named in
    ``fp32_nodes`` kept in FP32 (``fp16_islands`` chooses those)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" notes for tiny weights
        converted: onnx.ModelProto = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
            node_block_list=fp32_nodes or [],
        )
    return _casts_as_typed(converted)


def _casts_as_typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Cast whose output the converter retyped to FP16 casts to FP16. The converter changes
    the type recorded for a Cast's output when its reader runs in FP16, not the Cast's ``to``
    (a one-hot ``(labels == classes).to(z.dtype)`` stayed ``to = FLOAT`` beside a FLOAT16 output,
    which onnx.checker refuses); the reader wants FP16, so the cast makes FP16."""
    typed = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]
    }
    for node in model.graph.node:
        if node.op_type != "Cast" or typed.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
    return model


def node_layer(node: onnx.NodeProto) -> str:
    """The module path the dynamo exporter recorded for ``node`` (its name scopes), without the
    serving wrapper's prefix: the one parser of that metadata (FP16 islands, INT8 layers).

    The scopes list the enclosing modules, outermost first, then the op: either as qualified
    names (['', 'generator', 'generator.mapping', 'generator.mapping.net.0', 'linear'] is
    ``mapping.net.0`` inside the wrapper) or as one name per level (['', 'net', '0', 'conv']).
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [str(s) for s in ast.literal_eval(prop.value)]
            except (ValueError, SyntaxError):
                return ""
            path = [s for s in scopes[:-1] if s]  # the last scope is the op itself
            qualified = all(b.startswith(f"{a}.") for a, b in itertools.pairwise(path))
            name = path[-1] if qualified and path else ".".join(path)
            return name.removeprefix(f"{WRAPPED}.") if name != WRAPPED else ""
    return ""


def refuse_random_ops(model: onnx.ModelProto, name: str) -> None:
    """A graph that draws random numbers is refused whatever its weights: NVlabs initialises its
    noise strengths to 0, so ``randn * 0`` passes every run-twice check until trained weights
    make the images change per call."""
    found = [n for n in model.graph.node if n.op_type in RANDOM_OPS]
    if not found:
        return
    first = found[0]
    layer = node_layer(first)
    where = f"node {first.name!r} ({first.op_type}{f', layer {layer!r}' if layer else ''})"
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    raise RandomOpError(
        f"{name} draws random numbers: {where}{more}; a served model must give the same image "
        "for the same request whatever its weights (a noise strength of 0 today is a trained "
        "one tomorrow): make the noise a buffer or an input (e.g. --forward-kwargs "
        "noise_mode=const, or --noise seeded); nothing published"
    )


def save(model: onnx.ModelProto, path: Path) -> None:
    onnx.save_model(model, str(path), save_as_external_data=False)
    check(path)


def check(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxCheckError(f"{path.name} fails onnx.checker: {_first_line(e)}") from None


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:240]}"
