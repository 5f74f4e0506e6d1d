"""INT8 by post-training quantization with NNCF, calibrated on the generator's own inputs.

A generator's input distribution is known exactly: z ~ N(0, I) and uniform labels. So calibration
needs no data set: ``calibration_feeds`` draws ``samples`` inputs from a fixed seed (deterministic),
NNCF collects activation ranges on them (batches of ``CALIBRATION_BATCH``) and writes a QDQ ONNX
(QuantizeLinear/DequantizeLinear pairs around every weighted layer, symmetric "performance"
preset): the portable INT8 form that OpenVINO runs on CPU and TensorRT builds explicit-INT8
engines from.

``quantize_gated`` runs the quality gate (``quality_gate.py``) on the result. When it fails, it
falls back layer by layer, as NNCF's ``quantize_with_accuracy_control`` does with a user metric but
with the gate itself as the metric: every weighted layer is tried alone in floating point
(``nncf.IgnoredScope``), ranked by how much that helps, and layers are then kept in floating point
in that order until the gate passes. The layers kept in floating point are recorded in the
manifest. If even all but one layer in floating point fails, nothing is published.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from gendeploy.errors import ExportError, MissingDependencyError, QualityError, UsageError
from gendeploy.export.manifest import Precision
from gendeploy.export.quality_gate import PSNR_BOUNDS, QualityResult
from gendeploy.runtime.base import Feeds
from gendeploy.runtime.openvino import OpenVINORunner

DEFAULT_CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 32
CALIBRATION_SEED = 20_240_611  # a stream apart from the gate's per-seed latents
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

Judge = Callable[[onnx.ModelProto], QualityResult]


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


def calibration_feeds(latent_dim: int, num_classes: int, samples: int) -> list[Feeds]:
    """``samples`` inputs, z ~ N(0, I), labels uniform over the classes, in batches."""
    check_calibration_samples(samples)
    rng = np.random.default_rng(CALIBRATION_SEED)
    z = rng.standard_normal((samples, latent_dim), dtype=np.float32)
    labels = rng.permutation(np.arange(samples) % max(num_classes, 1)).astype(np.int64)
    items = []
    for i in range(0, samples, CALIBRATION_BATCH):
        item: Feeds = {"z": z[i : i + CALIBRATION_BATCH]}
        if num_classes > 0:
            item["labels"] = labels[i : i + CALIBRATION_BATCH]
        items.append(item)
    return items


def weighted_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the layers NNCF quantizes (weighted ops), in graph order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def describe_layers(model: onnx.ModelProto, names: list[str]) -> list[dict[str, str]]:
    """ONNX node names with the PyTorch module each came from (the dynamo exporter records it in
    ``pkg.torch.onnx.name_scopes``: ['', 'net', '0', 'convolution'] is module ``net.0``)."""
    scopes: dict[str, str] = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                with contextlib.suppress(ValueError, SyntaxError):
                    parts = [str(p) for p in ast.literal_eval(prop.value) if p]
                    scopes[node.name] = ".".join(parts[:-1])
    return [{"onnx_node": name, "module": scopes.get(name, "")} for name in names]


def float_layers(quantized: onnx.ModelProto) -> list[str]:
    """Weighted layers of a QDQ model whose weight is not dequantized from INT8 (stayed float)."""
    dequantized = {
        o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    return [
        n.name
        for n in quantized.graph.node
        if n.op_type in WEIGHTED_OPS and not (len(n.input) > 1 and n.input[1] in dequantized)
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


def quantize(
    model: onnx.ModelProto, items: list[Feeds], keep_float: list[str] | None = None
) -> onnx.ModelProto:
    """NNCF post-training quantization of an ONNX model to QDQ; ``keep_float`` layers untouched."""
    import nncf

    ignored = nncf.IgnoredScope(names=list(keep_float)) if keep_float else None
    try:
        with _quiet_nncf():
            quantized: onnx.ModelProto = nncf.quantize(
                model,
                nncf.Dataset(items),
                preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric: TensorRT's Q/DQ need it
                subset_size=len(items),
                ignored_scope=ignored,
            )
    except Exception as e:  # NNCF's own errors, or a graph it cannot read
        first = " ".join(str(e).split())[:200]
        raise ExportError(
            f"NNCF could not quantize this graph ({type(e).__name__}: {first}); export without "
            "--int8, or report the model"
        ) from None
    return quantized


@dataclass
class Int8Result:
    model: onnx.ModelProto
    quality: QualityResult
    float_layers: list[str]
    attempts: list[dict[str, Any]] = field(default_factory=list)  # the fallback's steps
    seconds: float = 0.0


def quantize_gated(
    fp32: onnx.ModelProto,
    items: list[Feeds],
    judge: Judge,
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
        return Int8Result(quantized, first, [], attempts, time.perf_counter() - started)
    layers = weighted_layers(fp32)
    if not fallback or len(layers) < 2:  # one layer in float would leave nothing in INT8
        first.check("int8")
    say(f"int8 fails the quality gate ({'; '.join(first.failures)}): falling back layer by layer")
    alone: dict[str, tuple[onnx.ModelProto, QualityResult]] = {}
    for layer in layers:
        model = quantize(fp32, items, [layer])
        alone[layer] = (model, judge(model))
        attempts.append(_attempt([layer], alone[layer][1]))
        say(f"  {layer} alone in float: {_attempt_text(alone[layer][1])}")
    ranked = sorted(alone, key=lambda name: _badness(alone[name][1]))

    def with_float(count: int) -> tuple[onnx.ModelProto, QualityResult]:
        """The ``count`` most helpful layers kept in float, judged."""
        if count == 1:
            return alone[ranked[0]]
        model = quantize(fp32, items, ranked[:count])
        result = judge(model)
        attempts.append(_attempt(ranked[:count], result))
        say(f"  {count} layers in float {ranked[:count]}: {_attempt_text(result)}")
        return model, result

    # the most float that still leaves one layer in INT8 first: if that fails, nothing will
    most = len(layers) - 1
    best = with_float(most)
    if not best[1].passed:
        raise QualityError(
            f"quality gate failed for 'int8' even with {most} of {len(layers)} weighted layers "
            f"kept in floating point ({'; '.join(best[1].failures)}; with every layer INT8: "
            f"{'; '.join(first.failures)}); this generator does not quantize: export it without "
            "--int8; nothing published"
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
    return Int8Result(best[0], best[1], keep, attempts, time.perf_counter() - started)


def _badness(result: QualityResult) -> float:
    """The worst of the gate's figures relative to its bound (<= 1: within bounds)."""
    bounds = PSNR_BOUNDS[Precision.int8]
    worst = result.frechet_ratio / result.max_frechet_ratio
    worst = max(worst, bounds.min_p1_db / max(result.psnr.p1_db, 1e-3))
    worst = max(worst, bounds.min_median_db / max(result.psnr.median_db, 1e-3))
    return worst + 10.0 * len(result.failures)


def _attempt_text(result: QualityResult) -> str:
    verdict = "passes" if result.passed else "fails (" + "; ".join(result.failures) + ")"
    return f"Frechet ratio {result.frechet_ratio:.3f}, PSNR p1 {result.psnr.p1_db} dB: {verdict}"


def _attempt(keep: list[str], result: QualityResult) -> dict[str, Any]:
    return {
        "float_layers": list(keep),
        "frechet_ratio": result.frechet_ratio,
        "psnr_p1_db": result.psnr.p1_db,
        "passed": result.passed,
    }


def signed_for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model with every activation quantizer in signed INT8, as TensorRT's explicit
    quantization requires (INT8, zero point 0). NNCF quantizes non-negative activations (after
    ReLU) as UINT8 with zero point 0 over [0, 255 s]; the same range in INT8 is [0, 127] with scale
    2s: one bit of resolution less on those tensors, the same clipping range. The engine built
    from it is gated on its own."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    doubled: set[str] = set()
    for node in out.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero = inits.get(node.input[2])
        if zero is None or zero.data_type != onnx.TensorProto.UINT8:
            continue
        values = onnx.numpy_helper.to_array(zero)
        if values.any():
            raise ExportError(
                f"{node.name}: asymmetric UINT8 quantizer (zero point {values.max()}); TensorRT "
                "needs symmetric INT8"
            )
        zero.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.int8), zero.name))
        scale = inits[node.input[1]]
        if scale.name not in doubled:
            doubled.add(scale.name)
            scale.CopyFrom(
                onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * 2, scale.name)
            )
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
