"""ONNX Runtime runner: the CPU provider here; CUDA / TensorRT execution providers where present."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy import cpus
from gendeploy.errors import ExportError, MissingDependencyError
from gendeploy.runtime.base import Feeds, Runner

CPU = "CPUExecutionProvider"
# weighted ops, as float kernels and as the integer kernels ORT fuses QDQ groups into
FLOAT_KERNELS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")
INT8_KERNELS = (
    "QLinearConv",
    "QLinearConvTranspose",
    "ConvInteger",
    "QLinearMatMul",
    "MatMulInteger",
    "QGemm",
    "DynamicQuantizeMatMul",
)


class OnnxRuntimeRunner(Runner):
    """One ``InferenceSession`` over an ONNX file. ``threads`` pins intra-op threads (bench; else
    ``gendeploy.cpus.current()``)."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path | str,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        ort = _import_ort()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: CPU-only machines log provider warnings
        if threads is None:  # sized to the CPUs we have, not the host's (gendeploy.cpus)
            threads = cpus.current()
            if not cpus.pinned():  # beside a co-tenant a spinning worker burns a shared core
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        wanted = providers or [CPU]
        missing = [p for p in wanted if p not in ort.get_available_providers()]
        if missing:
            raise MissingDependencyError(
                f"ONNX Runtime provider(s) {missing} not available here "
                f"(have {ort.get_available_providers()})"
            )
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=wanted)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph...)
            first = " ".join(str(e).split())[:200]
            raise ExportError(f"ONNX Runtime cannot load {model_path}: {first}") from None
        self.providers = self.session.get_providers()
        if self.providers[0] != wanted[0]:  # ORT falls back (TensorRT -> CUDA -> CPU) quietly
            raise MissingDependencyError(
                f"ONNX Runtime could not start {wanted[0]} for {Path(model_path).name}; it would "
                f"run on {self.providers[0]}"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if _has_qdq(model_path):
            self.precision = executed_precision(model_path, wanted, ort)

    def run(self, feeds: Feeds) -> np.ndarray:
        inputs = {name: feeds[name] for name in self.input_names if name in feeds}
        out: np.ndarray = self.session.run(self.output_names[:1], inputs)[0]
        return out


def _has_qdq(path: Path | str) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def executed_precision(path: Path | str, providers: list[str], ort: Any) -> str:
    """What a QDQ model's weighted ops run in after ORT's graph optimizations: "int8" when every
    one was fused into an integer kernel, "fp32" when none was (ORT then dequantizes and runs the
    float kernel: rounded values, FP32 arithmetic), "int8+fp32" for a mix."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="gendeploy-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), options, providers=providers)
        ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    has_int = any(op in INT8_KERNELS for op in ops)
    has_float = any(op in FLOAT_KERNELS for op in ops)
    if has_int and has_float:
        return "int8+fp32"
    return "int8" if has_int else "fp32"


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError(
            "onnxruntime is not installed: pip install 'gendeploy[cpu]'"
        ) from None
    return ort


def providers() -> list[str]:
    """The execution providers this ONNX Runtime build offers (empty if not installed)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    return list(_import_ort().get_available_providers())
