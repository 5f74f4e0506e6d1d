"""This machine's matmul peak, measured in the same run as the engines it is compared with.

The peak is the fastest call of a square matmul over the GEMM libraries present: torch (MKL /
oneDNN), ONNX Runtime (MLAS) and OpenVINO (oneDNN); on the GPU, torch alone. On this AMD EPYC they
differed by up to 20% (FP32: OpenVINO fastest), so a single library would understate the peak.
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


def _feeds(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal((size, size), dtype=np.float32) for n in "AB"}


def _onnxruntime_mm(size: int, dtype: str, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(_matmul_onnx(size), options, ["CPUExecutionProvider"])
    feeds = _feeds(size)
    return lambda: session.run(None, feeds)


def _openvino_mm(size: int, dtype: str, threads: int) -> Callable[[], object]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(_matmul_onnx(size), b"")
    config = {"INFERENCE_PRECISION_HINT": "f32" if dtype == "fp32" else "bf16"}
    compiled = core.compile_model(model, "CPU", {**config, "INFERENCE_NUM_THREADS": threads})
    request, feeds = compiled.create_infer_request(), _feeds(size)
    return lambda: request.infer(feeds)


LIBRARIES: dict[
    str, tuple[str, Callable[[int, str, int], Callable[[], object]], tuple[str, ...]]
] = {
    # name -> (module that must exist, builder, dtypes it computes natively)
    "torch": ("torch", _torch_mm, ("fp32", "bf16", "fp16")),
    "onnxruntime": ("onnxruntime", _onnxruntime_mm, ("fp32",)),
    "openvino": ("openvino", _openvino_mm, ("fp32", "bf16")),
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
    """Precisions with matmul units here: fp32 always; bf16 / fp16 where the hardware has them."""
    if torch.cuda.is_available():
        return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["fp32", "bf16"] if bf16_supported() else ["fp32"]


def bf16_supported() -> bool:
    """bf16 matmuls have hardware support here (a CUDA GPU, or avx512_bf16 / AMX on the CPU)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
