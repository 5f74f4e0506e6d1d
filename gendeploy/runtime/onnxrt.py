"""ONNX Runtime runner: the CPU provider here; CUDA / TensorRT execution providers where present."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy.errors import ExportError, MissingDependencyError
from gendeploy.runtime.base import Availability, Feeds, Runner, register_check

CPU = "CPUExecutionProvider"


class OnnxRuntimeRunner(Runner):
    """One ``InferenceSession`` over an ONNX file. ``threads`` pins intra-op threads (bench);
    ``optimize=False`` runs the graph as written (``fp16_islands.emulate_fp16_storage`` needs it:
    the optimizer would drop the FP16 stores again)."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path | str,
        providers: list[str] | None = None,
        threads: int | None = None,
        optimize: bool = True,
    ) -> None:
        ort = _import_ort()
        options = ort.SessionOptions()
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3  # errors only: CPU-only machines log provider warnings
        if threads is not None:
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

    def run(self, feeds: Feeds) -> np.ndarray:
        inputs = {name: feeds[name] for name in self.input_names if name in feeds}
        out: np.ndarray = self.session.run(self.output_names[:1], inputs)[0]
        return out


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


def _check() -> Availability:
    if importlib.util.find_spec("onnxruntime") is None:
        return Availability(False, "onnxruntime not installed")
    return Availability(True)


register_check("onnxruntime", _check)
