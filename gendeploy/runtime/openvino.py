"""OpenVINO runner (optional extra ``gendeploy[openvino]``): runs an exported ONNX file on CPU.

OpenVINO picks bf16 by itself on CPUs with bf16 units; ``precision="f32"`` pins FP32 so results
compare bit-close with eager, ``precision="bf16"`` asks for bf16 explicitly. The check is
registered only when the ``openvino`` package is installed (``gendeploy.runtime.openvino`` imports
without it, so callers can still ask :func:`openvino_availability` why it cannot run).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy.errors import ExportError, MissingDependencyError
from gendeploy.runtime.base import Availability, Feeds, Runner, register_check

PRECISIONS = ("f32", "bf16")


def openvino_availability() -> Availability:
    if importlib.util.find_spec("openvino") is None:
        return Availability(False, "openvino not installed (pip install 'gendeploy[openvino]')")
    return Availability(True)


class OpenVINORunner(Runner):
    """One compiled model and one infer request on ``device`` (default CPU)."""

    def __init__(
        self,
        model_path: Path | str,
        precision: str = "f32",
        threads: int | None = None,
        device: str = "CPU",
    ) -> None:
        if not openvino_availability().ok:
            raise MissingDependencyError(openvino_availability().reason)
        if precision not in PRECISIONS:
            raise MissingDependencyError(f"OpenVINO precision must be one of {PRECISIONS}")
        import openvino as ov

        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            core = ov.Core()
            self.compiled = core.compile_model(str(model_path), device, config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long messages
            first = " ".join(str(e).split())[:200]
            raise ExportError(f"OpenVINO cannot compile {model_path}: {first}") from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.name = "openvino" if precision == "f32" else f"openvino_{precision}"

    def run(self, feeds: Feeds) -> np.ndarray:
        inputs = {name: feeds[name] for name in self.input_names if name in feeds}
        self.request.infer(inputs)
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self.request = None
        self.compiled = None


if openvino_availability().ok:
    register_check("openvino", openvino_availability)
