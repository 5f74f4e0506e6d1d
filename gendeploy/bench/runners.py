"""Build each bench runner from an export, or say why it cannot run here (a skip reason).

Every runner is built from the export's files (ONNX, engine) or from the eager model the manifest
names, the same runners export validation uses, so "validated" and "benchmarked" mean one thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from gendeploy.errors import GendeployError
from gendeploy.export.manifest import Manifest
from gendeploy.runtime.base import Runner

# runner name -> (precision shown in the report, what it runs)
DESCRIPTIONS = {
    "eager": ("fp32", "PyTorch eager, inference_mode"),
    "eager_bf16": ("bf16", "PyTorch eager under autocast(bfloat16)"),
    "eager_fp16": ("fp16", "PyTorch eager under autocast(float16)"),
    "torch_compile": ("fp32", "torch.compile (Inductor, freezing, static shapes)"),
    "onnxruntime": ("fp32", "ONNX Runtime, CPU provider, fp32.onnx"),
    "onnxruntime_fp16": ("fp16", "ONNX Runtime, CUDA provider, fp16.onnx"),
    "onnxruntime_cuda": ("fp32", "ONNX Runtime, CUDA provider, fp32.onnx"),
    "onnxruntime_trt": ("fp32", "ONNX Runtime, TensorRT provider, fp32.onnx"),
    "tensorrt": ("fp16", "TensorRT engine (strongly typed FP16)"),
    "openvino": ("fp32", "OpenVINO CPU, INFERENCE_PRECISION_HINT=f32, fp32.onnx"),
    "openvino_bf16": ("bf16", "OpenVINO CPU, INFERENCE_PRECISION_HINT=bf16, fp32.onnx"),
}


@dataclass(frozen=True)
class Skip:
    runner: str
    reason: str


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_runner(
    name: str, manifest: Manifest, export_dir: Path, module: nn.Module, threads: int
) -> Runner | Skip:
    """The runner called ``name``, or a ``Skip`` with the reason it cannot run on this machine."""
    try:
        runner = _build(name, manifest, export_dir, module, threads)
    except GendeployError as e:
        return Skip(name, str(e))
    if isinstance(runner, str):
        return Skip(name, runner)
    runner.name = name
    return runner


def _build(
    name: str, manifest: Manifest, export_dir: Path, module: nn.Module, threads: int
) -> Runner | str:
    device = torch_device()
    if name == "eager":
        from gendeploy.runtime.eager import EagerRunner

        return EagerRunner(module, device, threads)
    if name in ("eager_bf16", "eager_fp16"):
        from gendeploy.runtime.autocast import AutocastRunner, autocast_availability

        dtype = "bfloat16" if name == "eager_bf16" else "float16"
        status = autocast_availability(dtype, device)
        return AutocastRunner(module, dtype, device, threads) if status.ok else status.reason
    if name == "torch_compile":
        from gendeploy.runtime.compile import CompileRunner, compile_availability

        status = compile_availability()
        return CompileRunner(module, device, threads) if status.ok else status.reason
    if name.startswith("onnxruntime"):
        return _onnxruntime(name, manifest, export_dir, threads)
    if name == "tensorrt":
        from gendeploy.runtime.tensorrt import TensorRTRunner, tensorrt_availability

        status = tensorrt_availability()
        if not status.ok:
            return status.reason
        engine = _artifact_path(manifest, export_dir, "trt_fp16")
        return TensorRTRunner(engine) if isinstance(engine, Path) else engine
    if name.startswith("openvino"):
        from gendeploy.runtime.openvino import OpenVINORunner, openvino_availability

        status = openvino_availability()
        if not status.ok:
            return status.reason
        precision = "bf16" if name == "openvino_bf16" else "f32"
        if precision == "bf16":
            from gendeploy.runtime.autocast import autocast_availability

            bf16 = autocast_availability("bfloat16", "cpu")
            if not bf16.ok:
                return bf16.reason
        onnx = _artifact_path(manifest, export_dir, "fp32")
        return OpenVINORunner(onnx, precision, threads) if isinstance(onnx, Path) else onnx
    return f"unknown runner {name!r}"


def _onnxruntime(name: str, manifest: Manifest, export_dir: Path, threads: int) -> Runner | str:
    from gendeploy.runtime.onnxrt import OnnxRuntimeRunner, providers

    have = providers()
    if not have:
        return "onnxruntime not installed (pip install 'gendeploy[cpu]')"
    wanted, artifact = {
        "onnxruntime": (["CPUExecutionProvider"], "fp32"),
        "onnxruntime_fp16": (["CUDAExecutionProvider"], "fp16"),
        "onnxruntime_cuda": (["CUDAExecutionProvider"], "fp32"),
        "onnxruntime_trt": (["TensorrtExecutionProvider", "CUDAExecutionProvider"], "fp32"),
    }[name]
    if wanted[0] not in have:
        why = " (ORT's CPU provider computes FP16 models in FP32)" if artifact == "fp16" else ""
        return f"{wanted[0]} not in this onnxruntime build (have {', '.join(have)}){why}"
    path = _artifact_path(manifest, export_dir, artifact)
    if not isinstance(path, Path):
        return path
    return OnnxRuntimeRunner(path, wanted, threads)


def _artifact_path(manifest: Manifest, export_dir: Path, artifact: str) -> Path | str:
    for a in manifest.artifacts:
        if a.name == artifact:
            return export_dir / a.path
    for s in manifest.skipped:
        if s.get("name") == artifact:
            return f"export skipped {artifact}: {s.get('reason', '')}"
    return f"export {manifest.name!r} has no {artifact!r} artifact"
