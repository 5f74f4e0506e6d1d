"""Runners: eager PyTorch, torch.compile, ONNX Runtime, TensorRT, OpenVINO, Triton client."""
