"""This machine's matmul peak, measured in the same run as the engines it is compared with.

The peak is the fastest call of a square matmul over the GEMM libraries present: torch (MKL /
oneDNN), ONNX Runtime (MLAS) and OpenVINO (oneDNN); on the GPU, torch alone. On this AMD EPYC they
differed by up to 20% (FP32: OpenVINO fastest), so a single library would understate the peak.

INT8 (CPU): ONNX Runtime's ``MatMulInteger`` (u8 x s8, int32 sums: MLAS's kernels) and OpenVINO on
a ``QuantizeLinear`` / ``DequantizeLinear`` MatMul (what NNCF's INT8 models hold; OpenVINO runs it
in u8 x s8); "GFLOP/s" there counts integer multiply-adds as 2 operations, as for floats.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gendeploy.bench.timing import Clock, StabilityRule, measure


@dataclass(frozen=True)
class Peak:
    dtype: str  # "fp32" or "bf16"
    gflops: float  # the best library's fastest call
    by: str
    each: dict[str, float]  # library -> GFLOP/s


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _torch_mm(size: int, dtype: str, threads: int) -> Callable[[], object]:
    """On the GPU when there is one (synchronised, so each call is timed whole)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(device, DTYPES[dtype]) for _ in range(2))
    out = torch.empty(size, size, dtype=DTYPES[dtype], device=device)
    if device == "cpu":
        return lambda: torch.mm(a, b, out=out)

    def call() -> None:
        torch.mm(a, b, out=out)
        torch.cuda.synchronize()

    return call


def _matmul_onnx(size: int) -> bytes:
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ABC"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", spec[:2], spec[2:]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def _int8_onnx(size: int, qdq: bool) -> bytes:
    """``MatMulInteger`` on u8 x s8 inputs (ONNX Runtime), or a float MatMul between
    Quantize/DequantizeLinear pairs (OpenVINO's INT8 form)."""
    from onnx import TensorProto, helper, numpy_helper

    float_in = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "AB"]
    if not qdq:
        ints = [
            helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size]),
            helper.make_tensor_value_info("B", TensorProto.INT8, [size, size]),
        ]
        out = helper.make_tensor_value_info("C", TensorProto.INT32, [size, size])
        nodes = [helper.make_node("MatMulInteger", ["A", "B"], ["C"])]
        graph = helper.make_graph(nodes, "mm_int8", ints, [out])
    else:
        inits = [
            numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "zero_u8"),
            numpy_helper.from_array(np.array(0, np.int8), "zero_s8"),
        ]
        nodes = []
        for name, zero in (("A", "zero_u8"), ("B", "zero_s8")):
            nodes.append(helper.make_node("QuantizeLinear", [name, "scale", zero], [name + "q"]))
            nodes.append(
                helper.make_node("DequantizeLinear", [name + "q", "scale", zero], [name + "d"])
            )
        nodes.append(helper.make_node("MatMul", ["Ad", "Bd"], ["C"]))
        out = helper.make_tensor_value_info("C", TensorProto.FLOAT, [size, size])
        graph = helper.make_graph(nodes, "mm_qdq", float_in, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def _feeds(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal((size, size), dtype=np.float32) for n in "AB"}


def _onnxruntime_mm(size: int, dtype: str, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    graph = _int8_onnx(size, qdq=False) if dtype == "int8" else _matmul_onnx(size)
    session = ort.InferenceSession(graph, options, ["CPUExecutionProvider"])
    feeds = _feeds(size)
    if dtype == "int8":
        rng = np.random.default_rng(0)
        feeds = {
            "A": rng.integers(0, 256, (size, size), dtype=np.uint8),
            "B": rng.integers(-128, 128, (size, size), dtype=np.int8),
        }
    return lambda: session.run(None, feeds)


def _openvino_mm(size: int, dtype: str, threads: int) -> Callable[[], object]:
    import openvino as ov

    core = ov.Core()
    graph = _int8_onnx(size, qdq=True) if dtype == "int8" else _matmul_onnx(size)
    model = core.read_model(graph, b"")
    config = {"INFERENCE_PRECISION_HINT": "bf16" if dtype == "bf16" else "f32"}
    compiled = core.compile_model(model, "CPU", {**config, "INFERENCE_NUM_THREADS": threads})
    request, feeds = compiled.create_infer_request(), _feeds(size)
    return lambda: request.infer(feeds)


LIBRARIES: dict[
    str, tuple[str, Callable[[int, str, int], Callable[[], object]], tuple[str, ...]]
] = {
    # name -> (module that must exist, builder, dtypes it computes natively)
    "torch": ("torch", _torch_mm, ("fp32", "bf16", "fp16")),
    "onnxruntime": ("onnxruntime", _onnxruntime_mm, ("fp32", "int8")),
    "openvino": ("openvino", _openvino_mm, ("fp32", "bf16", "int8")),
}


def matmul_peak(
    dtype: str = "fp32",
    size: int = 2048,
    threads: int | None = None,
    rule: StabilityRule | None = None,
    clock: Clock = time.perf_counter,
) -> Peak:
    """GFLOP/s of a ``size``-square matmul: the fastest call of the best library present."""
    if dtype not in peak_dtypes():
        raise ValueError(f"no {dtype} matmul units here (have {peak_dtypes()})")
    gpu = torch.cuda.is_available()  # then the GPU's peak is the one engines are compared with
    threads = threads or torch.get_num_threads()
    rule = rule or StabilityRule(window_s=0.3, max_windows=6)
    each = {}
    for name, (module, build, dtypes) in LIBRARIES.items():
        if (
            dtype not in dtypes
            or importlib.util.find_spec(module) is None
            or (gpu and name != "torch")
        ):
            continue
        result = measure(build(size, dtype, threads), rule, clock)
        each[name] = round(2 * size**3 / min(result.latencies_s) / 1e9, 1)
    best = max(each, key=lambda k: each[k])
    return Peak(dtype, each[best], best, each)


def peak_dtypes() -> list[str]:
    """Precisions with matmul units here: fp32 always; bf16 / fp16 where the hardware has them;
    int8 on the CPU where ONNX Runtime or OpenVINO can run it."""
    if torch.cuda.is_available():
        return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    found = ["fp32", "bf16"] if bf16_supported() else ["fp32"]
    if any(importlib.util.find_spec(m) for m in ("onnxruntime", "openvino")):
        found.append("int8")
    return found


def peak_for(precision: str, peaks: dict[str, float]) -> tuple[str, float]:
    """(dtype, GFLOP/s) of the peak a row that executed ``precision`` is a share of: the first
    part of ``"int8+fp32"`` (layers kept in float run beside INT8 ones) with a peak measured,
    else FP32's."""
    for part in precision.replace("(", "+").split("+"):
        part = part.strip()
        if part in peaks:
            return part, peaks[part]
    return "fp32", peaks.get("fp32", 0.0)


def bf16_supported() -> bool:
    """bf16 matmuls have hardware support here (a CUDA GPU, or avx512_bf16 / AMX on the CPU)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
