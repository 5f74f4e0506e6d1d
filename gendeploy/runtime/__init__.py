"""Runners: eager PyTorch, torch.compile, ONNX Runtime, TensorRT, OpenVINO, Triton client."""

# Registering the availability checks of the runners that need no optional dependency to import.
from gendeploy.runtime import eager, onnxrt, tensorrt  # noqa: F401
