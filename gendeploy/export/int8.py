"""INT8 by post-training quantization with NNCF, calibrated on the generator's own inputs.

A generator's input distribution is known exactly: z ~ N(0, I) and uniform labels. So calibration
needs no data set: ``calibration_feeds`` draws ``samples`` inputs from a fixed seed (deterministic),
NNCF collects activation ranges on them (batches of ``CALIBRATION_BATCH``) and writes a QDQ ONNX
(QuantizeLinear/DequantizeLinear pairs on the inputs and weights of the weighted layers only,
symmetric "performance" preset): the portable INT8 form that OpenVINO runs on CPU and TensorRT
builds explicit-INT8 engines from.

Only weighted layers (``WEIGHTED_OPS``) are quantized: NNCF by default also puts quantizers on
element-wise ops, Concat, Gather (embeddings) and, in a StyleGAN, the whole demodulation chain
(Pow, ReduceSum, Sqrt, Reciprocal, Mul, Resize, Add: 99 quantizers on the example), which gain
nothing from INT8 kernels and which a layer-by-layer fallback over weighted layers could never
take back. So every other op type is in NNCF's ``IgnoredScope``, every quantization point is a
weighted layer, and ``int8_layers`` / ``float_layers`` read from the graph exactly which layers
run INT8 (the manifest lists both).

Per-channel filters (``filter_layers``: depthwise convolutions, one input channel per group, and
single-channel ones, one channel in and out) are ignored too. In a generator they are fixed
filters: the blur of StyleGAN2's up/down-sampling and StyleGAN3's anti-aliasing FIR filters
(NVlabs' upfirdn2d as grouped conv2d, 58 of a StyleGAN3-T's 97 weighted layers; rosinality's
``upfirdn2d_native`` with the channels folded into the batch).
They are memory-bound, so INT8 kernels gain nothing on them, and rounding their coefficients
changes the filter's response; the fallback ranked each of them at the cost of an OpenVINO compile.

``quantize_gated`` runs the quality gate (``quality_gate.py``) on the result. When it fails, it
falls back layer by layer as NNCF's ``quantize_with_accuracy_control`` does: quantizers are
reverted from the quantized model (``revert``), each layer alone is ranked by the normalized MSE
its reversion leaves against FP32 on ``RANKING_SEEDS`` seeds (NNCF's ranking without a metric: one
cheap pass per layer), then the full gate decides: the most-float model first (all but one layer
reverted; if that fails, nothing will pass), then a bisection over the ranking for the fewest
layers in floating point that pass. 2 + log2(L) gate passes instead of one per layer. If even all
but one layer in floating point fails, nothing is published.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from gendeploy.errors import (
    ExportError,
    MissingDependencyError,
    QualityError,
    QuantizationError,
    UsageError,
)
from gendeploy.export.onnx_graph import node_layer
from gendeploy.export.progress import progress
from gendeploy.export.quality_gate import Verdict
from gendeploy.runtime.base import Feeds
from gendeploy.runtime.openvino import OpenVINORunner

DEFAULT_CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 32  # at most: a graph exported with a smaller max batch gets that (min)
CALIBRATION_SEED = 20_240_611  # a stream apart from the gate's per-seed latents
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SHAPE_ONLY_OPS = ("Shape", "Size")  # read a tensor's shape, not its values
# seeds the fallback ranks layers on (the full gate then decides): a StyleGAN3-T 16x16 draws
# 22 ms per image on OpenVINO (Zen 3), so 128 seeds cost its 39-layer ranking 110 s, 32 about
# 28 s. Its order changed between two runs on 128 seeds already. On 16 seeds the all-but-one
# candidate left INT8 a layer that breaks batch invariance and INT8 was refused: the NMSE
# ranking does not see what makes an image depend on its batch (a known limit).
RANKING_SEEDS = 32

Judge = Callable[[onnx.ModelProto], Verdict]  # the full quality gate (and tensor gate)
Error = Callable[[onnx.ModelProto], float]  # normalized MSE against FP32 on a few seeds


def int8_tools_missing() -> str:
    """Why INT8 cannot be exported here ("" when NNCF and OpenVINO are installed)."""
    missing = [m for m in ("nncf", "openvino") if _missing(m)]
    if not missing:
        return ""
    return (
        f"--int8 needs {' and '.join(missing)} (post-training quantization with NNCF, run by "
        "OpenVINO): pip install nncf openvino (both are in gendeploy[cpu])"
    )


def require_int8_tools() -> None:
    """A one-line error naming what to install when NNCF or OpenVINO is missing."""
    missing = int8_tools_missing()
    if missing:
        raise MissingDependencyError(missing)


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ValueError:  # a module set to None in sys.modules: treated as absent
        return True


def check_calibration_samples(samples: int) -> None:
    if samples < 1:
        raise UsageError(
            f"--calibration-samples must be >= 1 (NNCF needs inputs to measure activation "
            f"ranges; default {DEFAULT_CALIBRATION_SAMPLES}), got {samples}"
        )


def calibration_batch(max_batch: int) -> int:
    """Samples per calibration item: NNCF runs the graph on each item, so never more than the
    export's max batch (an export at ``--max-batch 1`` may be a static batch-1 graph)."""
    return min(CALIBRATION_BATCH, max_batch)


def calibration_feeds(
    latent_dim: int, num_classes: int, samples: int, batch: int = CALIBRATION_BATCH
) -> list[Feeds]:
    """``samples`` inputs, z ~ N(0, I), labels uniform over the classes, ``batch`` per item (the
    same samples whatever the batch)."""
    check_calibration_samples(samples)
    rng = np.random.default_rng(CALIBRATION_SEED)
    z = rng.standard_normal((samples, latent_dim), dtype=np.float32)
    labels = rng.permutation(np.arange(samples) % max(num_classes, 1)).astype(np.int64)
    items = []
    for i in range(0, samples, batch):
        item: Feeds = {"z": z[i : i + batch]}
        if num_classes > 0:
            item["labels"] = labels[i : i + batch]
        items.append(item)
    return items


def weighted_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the weighted layers (the only ones quantized), in graph order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def filter_layers(model: onnx.ModelProto) -> list[str]:
    """Conv / ConvTranspose layers that filter each channel alone (weight a constant): depthwise
    (one input channel per group: NVlabs' upfirdn2d as grouped conv2d) or one channel in and out
    (rosinality's ``upfirdn2d_native`` folds the channels into the batch and convolves a
    ``[1, 1, kh, kw]`` kernel): fixed filters that ``quantize`` leaves in floating point."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = shapes.get(node.input[1])
        if weight is None or len(weight) < 2:
            continue
        per_group = weight[1] if node.op_type == "Conv" else weight[0] // group
        if per_group == 1 and (group > 1 or weight[:2] == [1, 1]):
            found.append(node.name)
    return found


def describe_layers(model: onnx.ModelProto, names: list[str]) -> list[dict[str, str]]:
    """ONNX node names with their op type and the PyTorch module each came from."""
    nodes = {n.name: n for n in model.graph.node}
    return [
        {"onnx_node": name, "op": nodes[name].op_type, "module": node_layer(nodes[name])}
        for name in names
    ]


def _dequantized(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}


def int8_layers(quantized: onnx.ModelProto) -> list[str]:
    """Weighted layers of a QDQ model that run in INT8: their input and their weight (the second
    input: a MatMul's other operand) are both dequantized from INT8, so a runtime fuses them into
    an integer kernel."""
    dequantized = _dequantized(quantized)
    return [
        n.name
        for n in quantized.graph.node
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and set(n.input[:2]) <= dequantized
    ]


def float_layers(quantized: onnx.ModelProto) -> list[str]:
    """Weighted layers of a QDQ model that do not run in INT8 (stayed in floating point)."""
    quantized_layers = set(int8_layers(quantized))
    return [n for n in weighted_layers(quantized) if n not in quantized_layers]


def other_quantized(quantized: onnx.ModelProto) -> list[str]:
    """Nodes other than weighted layers that read an INT8-rounded tensor's values (none is
    expected: ``quantize`` puts quantizers on weighted layers only; the manifest says so if one
    appears). Shape and Size read only its shape, which rounding does not change."""
    dequantized = _dequantized(quantized)
    return [
        n.name
        for n in quantized.graph.node
        if n.op_type not in (*WEIGHTED_OPS, *SHAPE_ONLY_OPS, "QuantizeLinear", "DequantizeLinear")
        and dequantized.intersection(n.input)
    ]


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with constant subgraphs computed, so every layer's weight is an initializer:
    NNCF finds a weight only there (a rewritten StyleGAN's Conv takes ``Reshape(weight)``).
    The limits are raised from onnxscript's defaults so that whole weight tensors fold."""
    from onnxscript import optimizer

    folded: onnx.ModelProto = optimizer.optimize(
        model, input_size_limit=1 << 26, output_size_limit=1 << 26
    )
    return folded


def quantize(model: onnx.ModelProto, items: list[Feeds]) -> onnx.ModelProto:
    """NNCF post-training quantization of an ONNX model to QDQ, weighted layers only."""
    import nncf

    others = sorted({n.op_type for n in model.graph.node} - set(WEIGHTED_OPS))
    # validate=False: an op type listed here need not be one NNCF would have quantized
    ignored = nncf.IgnoredScope(types=others, names=filter_layers(model), validate=False)
    try:
        with _quiet_nncf():
            quantized: onnx.ModelProto = nncf.quantize(
                model,
                nncf.Dataset(items),
                preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric: TensorRT's Q/DQ need it
                subset_size=len(items),
                ignored_scope=ignored,
                # weights in 7 bits on every layer: x86 CPUs without VNNI multiply u8 x s8 pairs
                # into int16 with saturation (AVX2 vpmaddubsw), and 8-bit weights overflowed it:
                # on a Zen 3 the gate refused layers a Zen 4 (VNNI) kept in INT8. The artifact
                # must draw the same on whichever CPU serves it.
                advanced_parameters=nncf.AdvancedQuantizationParameters(
                    overflow_fix=nncf.OverflowFix.ENABLE
                ),
            )
    except Exception as e:  # NNCF's own errors, or a graph it cannot read
        first = " ".join(str(e).split())[:200]
        raise QuantizationError(
            f"NNCF could not quantize this graph ({type(e).__name__}: {first}); export without "
            "--int8, or report the model"
        ) from None
    return quantized


def revert(quantized: onnx.ModelProto, fp32: onnx.ModelProto, layers: list[str]) -> onnx.ModelProto:
    """``quantized`` with ``layers`` back in floating point, as NNCF's accuracy control reverts
    quantizers: each reads its FP32 inputs again (activation, weight and bias as in ``fp32``, the
    graph NNCF was given); Q/DQ nodes and initializers nothing reads any more are dropped."""
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    if not layers:
        return out
    original = {n.name: n for n in fp32.graph.node}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    restored: dict[str, str] = {}  # fp32 initializer -> its name in ``out``
    for node in out.graph.node:
        if node.name not in layers:
            continue
        inputs = []
        for name in original[node.name].input:
            if name in fp32_inits:  # NNCF replaced or corrected it: the FP32 value under a new name
                if name not in restored:
                    restored[name] = f"{name}__float"
                    copy = onnx.TensorProto()
                    copy.CopyFrom(fp32_inits[name])
                    copy.name = restored[name]
                    out.graph.initializer.append(copy)
                name = restored[name]
            inputs.append(name)
        node.input[:] = inputs
    return _prune(out)


def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Q/DQ nodes whose outputs nothing reads, then initializers nothing reads."""
    graph = model.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read
        ]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {i for n in graph.node for i in n.input}
    unused = [i for i in graph.initializer if i.name not in read]
    for init in unused:
        graph.initializer.remove(init)
    return model


@dataclass
class Int8Result:
    model: onnx.ModelProto
    quality: Verdict
    float_layers: list[str]  # kept in floating point by the fallback
    attempts: list[dict[str, Any]] = field(default_factory=list)  # the gate passes, in order
    ranking: list[dict[str, Any]] = field(default_factory=list)  # the fallback's layer ranking
    seconds: float = 0.0


def quantize_gated(
    fp32: onnx.ModelProto,
    items: list[Feeds],
    judge: Judge,
    error: Error,
    say: Callable[[str], None],
    fallback: bool = True,
) -> Int8Result:
    """Quantize, judge with the quality gate, fall back layer by layer until it passes."""
    started = time.perf_counter()
    fp32 = fold_constants(fp32)
    quantized = quantize(fp32, items)
    first = judge(quantized)
    attempts = [_attempt([], first)]
    if first.passed:
        return Int8Result(quantized, first, [], attempts, [], time.perf_counter() - started)
    layers = int8_layers(quantized)
    if not fallback:
        first.check("int8")

    if len(layers) < 2:  # one layer in float would leave nothing in INT8
        _quantization_is_the_cause(fp32, judge)
        raise QualityError(
            f"quality gate failed for 'int8' ({first.failure_text}) and the generator has "
            f"{len(layers)} INT8 layer(s): no layer-by-layer fallback; export it without --int8; "
            "nothing published",
            artifact="int8",
        )
    say(
        f"int8 fails the quality gate ({first.failure_text}): falling back layer by layer "
        f"({len(layers)} layers ranked on {RANKING_SEEDS} seeds, then the gate decides)"
    )
    ranked, ranking = _rank_layers(quantized, fp32, layers, error)
    say("  alone in float, normalized MSE vs FP32: " + _ranking_text(ranking))

    most = len(layers) - 1  # all but one in float: if that fails, nothing will pass
    with progress("int8 fallback: gate passes", 1 + math.ceil(math.log2(most))) as advance:

        def with_float(count: int) -> tuple[onnx.ModelProto, Verdict]:
            """The ``count`` best-ranked layers back in float, judged by the full gate."""
            model = revert(quantized, fp32, ranked[:count])
            result = judge(model)
            attempts.append(_attempt(ranked[:count], result))
            say(f"  {count} layer(s) in float {ranked[:count]}: {_attempt_text(result)}")
            advance(1)
            return model, result

        best = with_float(most)
        if not best[1].passed:
            _quantization_is_the_cause(fp32, judge)
            raise QualityError(
                f"quality gate failed for 'int8' even with {most} of {len(layers)} weighted "
                f"layers kept in floating point ({best[1].failure_text}; with every layer "
                f"INT8: {first.failure_text}); this generator does not quantize: export "
                "it without --int8; nothing published",
                artifact="int8",
            )
        # then the fewest that pass, by bisection over the ranking (the quality gate decides)
        low, high = 0, most  # low fails (0 = every layer INT8), high passes
        while high - low > 1:
            middle = (low + high) // 2
            judged = with_float(middle)
            if judged[1].passed:
                high, best = middle, judged
            else:
                low = middle
    keep = ranked[:high]
    say(f"int8 passes with {high} of {len(layers)} layers kept in float: {keep}")
    return Int8Result(best[0], best[1], keep, attempts, ranking, time.perf_counter() - started)


def _quantization_is_the_cause(fp32: onnx.ModelProto, judge: Judge) -> None:
    """ "does not quantize" only when measured: the unquantized graph, judged the same way on
    the same runtime, must pass (else no layer kept in float can help, and the error says what
    fails instead: a name, the runtime itself)."""
    plain = judge(fp32)
    if not plain.passed:
        raise QualityError(
            f"int8: the unquantized graph fails the same gate on the INT8 runtime "
            f"({plain.failure_text}): not a quantization problem; nothing published for int8",
            artifact="int8",
        )


def _rank_layers(
    quantized: onnx.ModelProto, fp32: onnx.ModelProto, layers: list[str], error: Error
) -> tuple[list[str], list[dict[str, Any]]]:
    """The layers by the error each leaves alone in float (least first), and the ranking."""
    errors: dict[str, float] = {}
    with progress("int8 fallback: ranking layers", len(layers)) as advance:
        for layer in layers:
            errors[layer] = error(revert(quantized, fp32, [layer]))
            advance(1)
    ranked = sorted(layers, key=lambda name: errors[name])  # stable: graph order on ties
    return ranked, [{"layer": name, "nmse": errors[name]} for name in ranked]


def _ranking_text(ranking: list[dict[str, Any]]) -> str:
    shown = ", ".join(f"{r['layer']} {r['nmse']:.3g}" for r in ranking[:8])
    return shown + (f" (+{len(ranking) - 8} more)" if len(ranking) > 8 else "")


def _attempt_text(result: Verdict) -> str:
    verdict = "passes" if result.passed else f"fails ({result.failure_text})"
    shown = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in result.figures().items())
    return f"{shown}: {verdict}" if shown else verdict


def _attempt(keep: list[str], result: Verdict) -> dict[str, Any]:
    failed = {} if result.passed else {"failure": result.failure_text}
    return {"float_layers": list(keep), **result.figures(), "passed": result.passed, **failed}


def signed_for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model with every activation quantizer in signed INT8, as TensorRT's explicit
    quantization requires (INT8, zero point 0). NNCF quantizes non-negative activations (after
    ReLU) as UINT8 with zero point 0 over [0, 255 s]; the same range in INT8 is [0, 127] with scale
    2s: one bit of resolution less on those tensors, the same clipping range. The engine built
    from it is gated on its own."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    quantizers = [
        n
        for n in out.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    ]
    # decided on the original types first: a Q and its DQ may share a zero point or a scale
    unsigned = [
        n
        for n in quantizers
        if n.input[2] in inits and inits[n.input[2]].data_type == onnx.TensorProto.UINT8
    ]
    scales = {n.input[1] for n in unsigned}
    shared = [n.name for n in quantizers if n not in unsigned and n.input[1] in scales]
    if shared:
        raise ExportError(
            f"{shared[0]}: a signed quantizer shares its scale with an unsigned one; TensorRT's "
            "INT8 needs them apart: export without TensorRT INT8, or report the model"
        )
    for name in sorted({n.input[2] for n in unsigned}):
        values = onnx.numpy_helper.to_array(inits[name])
        if values.any():
            raise ExportError(
                f"{name}: asymmetric UINT8 quantizer (zero point {values.max()}); TensorRT needs "
                "symmetric INT8"
            )
        inits[name].CopyFrom(onnx.numpy_helper.from_array(values.astype(np.int8), name))
    # the types NNCF recorded (value_info) for the zero points and the quantized tensors
    now_signed = {n.input[2] for n in unsigned}
    now_signed |= {n.output[0] for n in unsigned if n.op_type == "QuantizeLinear"}
    for info in [*out.graph.value_info, *out.graph.output]:
        if info.name in now_signed:
            info.type.tensor_type.elem_type = onnx.TensorProto.INT8
    for name in sorted(scales):
        values = onnx.numpy_helper.to_array(inits[name])
        # keep the scale's dtype: numpy 1.x makes a 0-d float32 array times 2 a float64, which
        # QuantizeLinear does not accept (an invalid model)
        inits[name].CopyFrom(onnx.numpy_helper.from_array((values * 2).astype(values.dtype), name))
    return out


def save_ir(onnx_path: Path, xml_path: Path) -> None:
    """The same QDQ model as OpenVINO IR (``.xml`` + ``.bin``), weights kept as they are."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def time_openvino(
    path: Path, feeds: Feeds, seconds: float = 0.5, threads: int | None = None
) -> float:
    """Median seconds per call of ``path`` under OpenVINO on ``feeds`` (warm)."""
    with OpenVINORunner(path, "f32", threads) as runner:
        runner.run(feeds)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            t = time.perf_counter()
            runner.run(feeds)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs INFO lines and draws a progress bar per statistics pass; export prints its own."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
