"""TensorRT runner: deserializes an engine and runs it with ``execute_async_v3``.

Buffers are torch CUDA tensors (no pycuda): inputs are copied to the device, the output is
allocated at the shape the context reports, and ``set_tensor_address`` binds each by name
(the name-based I/O API of TensorRT 10 and 11). Written from TensorRT's documented Python API;
exercised only by tests marked ``gpu``.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy.errors import ExportError, MissingDependencyError
from gendeploy.runtime.base import Availability, Feeds, Runner, executed_precision

# What a layer's "Format/Datatype" (engine inspector JSON, DETAILED verbosity) names, in the order
# checked: "Thirty-two wide channel vectorized row major Int8 format", "Row major linear FP16
# format", "Half", "Float"...
_DATATYPES = (
    ("int8", "int8"),
    ("fp8", "fp8"),
    ("int4", "int4"),
    ("bf16", "bf16"),
    ("fp16", "fp16"),
    ("half", "fp16"),
    ("fp32", "fp32"),
    ("float", "fp32"),
)
# layers that compute with weights: what "the engine runs INT8" means (a StyleGAN's demodulation
# or a reformat in FP32 beside INT8 convolutions is still an INT8 engine)
_WEIGHTED = ("convolution", "deconvolution", "gemm", "matrixmultiply", "fullyconnected")


def tensorrt_availability() -> Availability:
    """Whether engines can be built and run here, and if not, why (one phrase)."""
    if importlib.util.find_spec("tensorrt") is None:
        return Availability(False, "tensorrt not installed")
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as e:  # the -bindings wheel imports without its libraries
        return Availability(False, f"tensorrt does not import ({str(e).splitlines()[0][:120]})")
    import torch

    if not torch.cuda.is_available():
        return Availability(False, "no CUDA device")
    return Availability(True)


def import_tensorrt() -> Any:
    """``import tensorrt`` or a one-line MissingDependencyError saying why it cannot run here."""
    status = tensorrt_availability()
    if not status.ok:
        raise MissingDependencyError(
            f"TensorRT engines need TensorRT and a CUDA GPU: {status.reason}"
        )
    import tensorrt as trt

    return trt


class TensorRTRunner(Runner):
    """Runs one serialized engine (one optimization profile, dynamic batch) on the current GPU."""

    name = "tensorrt"

    def __init__(self, engine_path: Path | str, device: int = 0) -> None:
        trt = import_tensorrt()
        import torch

        self._torch = torch
        self.device = torch.device("cuda", device)
        # Creating the stream first initialises torch's CUDA context, which TensorRT then shares.
        self.stream = torch.cuda.Stream(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise ExportError(
                    f"TensorRT cannot deserialize {engine_path}: built for another GPU or TensorRT "
                    "version? Re-export on this machine"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        torch_dtypes = _torch_dtypes(trt, torch)
        self._dtypes = {n: torch_dtypes[self.engine.get_tensor_dtype(n)] for n in names}
        # read back from the built engine, never stated: what its layers really run in
        self.layer_precisions = self._inspect(trt)
        self.precision = executed_precision(self.layer_precisions, default="unknown")

    def _inspect(self, trt: Any) -> dict[str, int]:
        """Per-layer precision from TensorRT's engine inspector. Formats are shown only for
        concrete shapes, so the context gets every input at the profile's smallest batch."""
        profile = 0
        for name in self.input_names:
            smallest = self.engine.get_tensor_profile_shape(name, profile)[0]
            self.context.set_input_shape(name, tuple(smallest))
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        return layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))

    def run(self, feeds: Feeds) -> np.ndarray:
        torch = self._torch
        keep = []  # device tensors must outlive the asynchronous execution
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for name in self.input_names:
                host = np.ascontiguousarray(feeds[name])
                tensor = torch.from_numpy(host).to(self.device, self._dtypes[name])
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise ExportError(
                        f"input {name} shape {tuple(tensor.shape)} is outside the engine's "
                        "optimization profile (batch 1..max)"
                    )
                self.context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
            out_name = self.output_names[0]
            shape = tuple(self.context.get_tensor_shape(out_name))
            out = torch.empty(shape, dtype=self._dtypes[out_name], device=self.device)
            self.context.set_tensor_address(out_name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ExportError(
                    f"TensorRT execution failed for input shapes {[t.shape for t in keep]}"
                )
            self.stream.synchronize()
        result: np.ndarray = out.cpu().numpy()
        return result

    def close(self) -> None:
        self.context = None
        self.engine = None


def _torch_dtypes(trt: Any, torch: Any) -> dict[Any, Any]:
    pairs = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
    }
    return {getattr(trt.DataType, k): v for k, v in pairs.items() if hasattr(trt.DataType, k)}


def layer_precisions(engine_information: str) -> dict[str, int]:
    """How many weighted layers (convolutions, matrix products) of an engine run in each
    precision, from the engine inspector's JSON (``get_engine_information``; an engine built with
    ``ProfilingVerbosity.DETAILED``): a layer's precision is its first input's datatype. Empty
    when the engine shows no weighted layer with a datatype (no per-layer detail, or layers fused
    past recognition): then nothing is claimed."""
    try:
        layers = json.loads(engine_information).get("Layers", [])
    except (json.JSONDecodeError, AttributeError):
        return {}
    counts: Counter[str] = Counter()
    for layer in layers:
        if not isinstance(layer, dict):  # LAYER_NAMES_ONLY: names only
            continue
        kind = str(layer.get("LayerType", "")) + str(layer.get("ParameterType", ""))
        if not any(w in kind.lower() for w in _WEIGHTED):
            continue
        inputs = layer.get("Inputs") or [{}]
        datatype = str(inputs[0].get("Format/Datatype", "")).lower()
        found = next((p for word, p in _DATATYPES if word in datatype), None)
        if found is not None:
            counts[found] += 1
    return dict(counts)
