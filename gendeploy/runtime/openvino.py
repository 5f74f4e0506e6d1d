"""OpenVINO runner: runs an exported ONNX file (FP32 or INT8 QDQ) or an IR on CPU.

OpenVINO picks bf16 by itself on CPUs with bf16 units; ``precision="f32"`` pins FP32 so results
compare bit-close with eager, ``precision="bf16"`` asks for bf16. Asking is not getting: a hint is
only a hint, so ``precision`` on the runner is read back from the compiled model's *runtime* graph
(each layer's ``runtimePrecision``), the precision its convolutions really executed in. On the AMD
Zen 4 machine of this project the bf16 hint is reported back as bf16 and every layer still runs
in f32, outputs bit-identical to FP32: such a runner says "fp32". An INT8 QDQ model runs its
quantized convolutions in i8/u8 kernels (VNNI / AMX) and says "int8".
``gendeploy.runtime.openvino`` imports without the ``openvino`` package, so callers can still ask
:func:`openvino_availability` why it cannot run.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy import cpus
from gendeploy.errors import ExportError, MissingDependencyError
from gendeploy.runtime.base import Availability, Feeds, Runner, executed_precision

PRECISIONS = ("f32", "bf16")
# the runtime graph's layer types that carry the arithmetic (the rest reorders and casts)
COMPUTE_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatMul", "GroupConvolution")
_RUNTIME_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}


def openvino_availability() -> Availability:
    if importlib.util.find_spec("openvino") is None:
        return Availability(False, "openvino not installed (pip install 'gendeploy[cpu]')")
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
        config["INFERENCE_NUM_THREADS"] = threads or cpus.current()  # not the host's cores
        try:
            core = ov.Core()
            model = core.read_model(str(model_path))
            # the names the file gives its inputs and outputs, before compiling: the compiled
            # model merges the names of fused tensors (StyleGAN3's output scale folded into the
            # last convolution: {'conv2d_17', 'images'}) and get_any_name() picks any of them
            self.input_names = [p.get_any_name() for p in model.inputs]
            self.output_names = [p.get_any_name() for p in model.outputs]
            self.compiled = core.compile_model(model, device, config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long messages
            first = " ".join(str(e).split())[:200]
            raise ExportError(f"OpenVINO cannot compile {model_path}: {first}") from None
        self.request = self.compiled.create_infer_request()
        self._inputs = [frozenset(p.get_names()) for p in self.compiled.inputs]
        self._outputs = [frozenset(p.get_names()) for p in self.compiled.outputs]
        self.layer_precisions = runtime_precisions(self.compiled)
        self.precision = executed_precision(self.layer_precisions)
        self.name = "openvino" if precision == "f32" else f"openvino_{precision}"

    def run(self, feeds: Feeds) -> np.ndarray:
        inputs = {i: feeds[n] for i, names in enumerate(self._inputs) for n in names if n in feeds}
        self.request.infer(inputs)
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def input_aliases(self) -> list[frozenset[str]]:
        return [names | {n} for names, n in zip(self._inputs, self.input_names, strict=True)]

    def output_aliases(self) -> list[frozenset[str]]:
        return [names | {n} for names, n in zip(self._outputs, self.output_names, strict=True)]

    def close(self) -> None:
        self.request = None
        self.compiled = None


def runtime_precisions(compiled: Any) -> dict[str, int]:
    """How many compute layers of the runtime graph ran in each precision ("fp32", "int8"...)."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer in COMPUTE_LAYERS and "runtimePrecision" in info:
            raw = info["runtimePrecision"].astype(str)
            counts[_RUNTIME_NAMES.get(raw, raw)] += 1
    return dict(counts)
