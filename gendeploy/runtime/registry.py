"""The runner registry: every named runner is one class, registered once.

A ``RunnerEntry`` says its name, the precision it is meant to execute, what it runs, the export
artifact it needs and why it cannot run here (``unavailable``); ``create`` builds the runner.
Bench suites, the report's descriptions and ``build_runner`` are all derived from ``REGISTRY``:
adding a runner is one class with ``@register`` in this file, nothing else.

The precision a runner *executed* is read back from the engine where it can say (``Runner.
precision``). An entry with ``strict_precision`` that did not get its precision is unavailable
(OpenVINO's bf16 hint on a CPU where it still runs f32: no bf16 row). ``onnxruntime_int8`` is not
strict: ORT runs a QDQ model whatever it does with it, and its row shows what that was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from gendeploy.errors import GendeployError, UsageError
from gendeploy.manifest import Manifest, Precision
from gendeploy.runtime import autocast, onnxrt, openvino, tensorrt
from gendeploy.runtime.base import Runner
from gendeploy.runtime.compile import CompileRunner, compile_availability
from gendeploy.runtime.eager import EagerRunner

if TYPE_CHECKING:
    from torch import nn


class RunnerUnavailable(GendeployError):
    """This runner cannot run on this machine or for this export; the message says why."""


@dataclass(frozen=True)
class RunnerContext:
    """What a runner is built from: the export (files + manifest) and its eager module."""

    manifest: Manifest
    export_dir: Path
    module: nn.Module
    threads: int | None
    device: str = "cpu"  # torch device of the eager-family runners


class RunnerEntry(ABC):
    name: ClassVar[str]
    precision: ClassVar[Precision]  # meant to execute; the built runner's .precision says what did
    description: ClassVar[str]
    artifact: ClassVar[str | None] = None  # the export artifact it runs (None: the eager module)
    strict_precision: ClassVar[bool] = True

    def unavailable(self, ctx: RunnerContext) -> str | None:
        """Why it cannot run on this machine (a missing library, device or unit), else None."""
        return None

    @abstractmethod
    def create(self, ctx: RunnerContext) -> Runner:
        """Build the runner (the artifact exists and ``unavailable`` said None)."""

    def artifact_path(self, ctx: RunnerContext, name: str | None = None) -> Path:
        return ctx.export_dir / ctx.manifest.artifact(name or self.artifact or "").path


REGISTRY: dict[str, RunnerEntry] = {}


def register(cls: type[RunnerEntry]) -> type[RunnerEntry]:
    if cls.name in REGISTRY:
        raise ValueError(f"runner {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls()
    return cls


def runner_names() -> tuple[str, ...]:
    """Every registered runner, in report order."""
    return tuple(REGISTRY)


def get_entry(name: str) -> RunnerEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown runner {name!r}; known: {', '.join(REGISTRY)}") from None


def describe() -> dict[str, dict[str, str]]:
    """name -> precision, what it runs, artifact: the report's runner table."""
    return {
        name: {
            "precision": e.precision.value,
            "what": e.description,
            "artifact": e.artifact or "(eager module)",
        }
        for name, e in REGISTRY.items()
    }


def build_runner(name: str, ctx: RunnerContext) -> Runner:
    """The runner called ``name``; ``RunnerUnavailable`` with the reason if it cannot run here."""
    entry = get_entry(name)
    reason = entry.unavailable(ctx) or _artifact_missing(ctx.manifest, entry.artifact)
    if reason:
        raise RunnerUnavailable(reason)
    try:
        runner = entry.create(ctx)
    except RunnerUnavailable:
        raise
    except GendeployError as e:
        raise RunnerUnavailable(str(e)) from None
    runner.name = name
    wanted = entry.precision.value
    if entry.strict_precision and wanted not in runner.precision.split("+"):
        runner.close()
        raise RunnerUnavailable(
            f"asked for {wanted}, the engine executed {runner.precision} (its runtime graph says "
            f"so): no {wanted} here"
        )
    return runner


def _artifact_missing(manifest: Manifest, artifact: str | None) -> str | None:
    if artifact is None or any(a.name == artifact for a in manifest.artifacts):
        return None
    for s in manifest.skipped:
        if s.get("name") == artifact:
            return f"export skipped {artifact}: {s.get('reason', '')}"
    return f"export {manifest.name!r} has no {artifact!r} artifact"


def _ort_missing(provider: str, why: str = "") -> str | None:
    have = onnxrt.providers()
    if not have:
        return "onnxruntime not installed (pip install 'gendeploy[cpu]')"
    if provider not in have:
        return f"{provider} not in this onnxruntime build (have {', '.join(have)}){why}"
    return None


def _availability_reason(status: object) -> str | None:
    ok, reason = getattr(status, "ok", False), getattr(status, "reason", "")
    return None if ok else str(reason)


# ---- eager PyTorch ---------------------------------------------------------------------------


@register
class Eager(RunnerEntry):
    name = "eager"
    precision = Precision.fp32
    description = "PyTorch eager, inference_mode"

    def create(self, ctx: RunnerContext) -> Runner:
        return EagerRunner(ctx.module, ctx.device, ctx.threads)


class _Autocast(RunnerEntry):
    dtype: ClassVar[str]  # torch's name: "bfloat16", "float16"

    def unavailable(self, ctx: RunnerContext) -> str | None:
        return _availability_reason(autocast.autocast_availability(self.dtype, ctx.device))

    def create(self, ctx: RunnerContext) -> Runner:
        return autocast.AutocastRunner(ctx.module, self.dtype, ctx.device, ctx.threads)


@register
class EagerBF16(_Autocast):
    name = "eager_bf16"
    precision = Precision.bf16
    description = "PyTorch eager under autocast(bfloat16) (not exportable)"
    dtype = "bfloat16"


@register
class EagerFP16(_Autocast):
    name = "eager_fp16"
    precision = Precision.fp16
    description = "PyTorch eager under autocast(float16)"
    dtype = "float16"


@register
class TorchCompile(RunnerEntry):
    name = "torch_compile"
    precision = Precision.fp32
    description = "torch.compile (Inductor, freezing, static shapes)"

    def unavailable(self, ctx: RunnerContext) -> str | None:
        return _availability_reason(compile_availability())

    def create(self, ctx: RunnerContext) -> Runner:
        return CompileRunner(ctx.module, ctx.device, ctx.threads)


# ---- ONNX Runtime ----------------------------------------------------------------------------


class _OnnxRuntime(RunnerEntry):
    providers: ClassVar[tuple[str, ...]]
    why_missing: ClassVar[str] = ""

    def unavailable(self, ctx: RunnerContext) -> str | None:
        return _ort_missing(self.providers[0], self.why_missing)

    def create(self, ctx: RunnerContext) -> Runner:
        return onnxrt.OnnxRuntimeRunner(self.artifact_path(ctx), list(self.providers), ctx.threads)


@register
class OnnxRuntimeCPU(_OnnxRuntime):
    name = "onnxruntime"
    precision = Precision.fp32
    description = "ONNX Runtime, CPU provider, fp32.onnx"
    artifact = "fp32"
    providers = (onnxrt.CPU,)


@register
class OnnxRuntimeFP16(_OnnxRuntime):
    name = "onnxruntime_fp16"
    precision = Precision.fp16
    description = "ONNX Runtime, CUDA provider, fp16.onnx"
    artifact = "fp16"
    providers = ("CUDAExecutionProvider",)
    why_missing = " (ORT's CPU provider computes FP16 models in FP32)"

    def create(self, ctx: RunnerContext) -> Runner:
        runner = super().create(ctx)
        runner.precision = "fp16"  # the CUDA provider runs the FP16 graph's kernels in FP16
        return runner


@register
class OnnxRuntimeCUDA(_OnnxRuntime):
    name = "onnxruntime_cuda"
    precision = Precision.fp32
    description = "ONNX Runtime, CUDA provider, fp32.onnx"
    artifact = "fp32"
    providers = ("CUDAExecutionProvider",)


@register
class OnnxRuntimeTensorRT(_OnnxRuntime):
    name = "onnxruntime_trt"
    precision = Precision.fp32
    description = "ONNX Runtime, TensorRT provider, fp32.onnx"
    artifact = "fp32"
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@register
class OnnxRuntimeINT8(_OnnxRuntime):
    name = "onnxruntime_int8"
    precision = Precision.int8
    description = (
        "ONNX Runtime, CPU provider, int8.onnx (QDQ): integer kernels where ORT fuses a QDQ group "
        "(QLinearConv), else dequantize + FP32 kernel (ConvTranspose has no INT8 kernel)"
    )
    artifact = "int8"
    providers = (onnxrt.CPU,)
    strict_precision = False  # its row shows what ORT made of the QDQ model, INT8 or not


# ---- TensorRT --------------------------------------------------------------------------------


class _TensorRT(RunnerEntry):
    def unavailable(self, ctx: RunnerContext) -> str | None:
        return _availability_reason(tensorrt.tensorrt_availability())

    def create(self, ctx: RunnerContext) -> Runner:
        # its precision is read back from the engine (TensorRTRunner.layer_precisions)
        return tensorrt.TensorRTRunner(self.artifact_path(ctx))


@register
class TensorRTFP16(_TensorRT):
    name = "tensorrt"
    precision = Precision.fp16
    description = "TensorRT engine (strongly typed FP16)"
    artifact = "trt_fp16"


@register
class TensorRTINT8(_TensorRT):
    name = "tensorrt_int8"
    precision = Precision.int8
    description = "TensorRT engine, explicit INT8 from int8.onnx's Q/DQ (strongly typed)"
    artifact = "trt_int8"


# ---- OpenVINO --------------------------------------------------------------------------------


class _OpenVINO(RunnerEntry):
    hint: ClassVar[str] = "f32"

    def unavailable(self, ctx: RunnerContext) -> str | None:
        return _availability_reason(openvino.openvino_availability())

    def create(self, ctx: RunnerContext) -> Runner:
        return openvino.OpenVINORunner(self.artifact_path(ctx), self.hint, ctx.threads)


@register
class OpenVINOFP32(_OpenVINO):
    name = "openvino"
    precision = Precision.fp32
    description = "OpenVINO CPU, INFERENCE_PRECISION_HINT=f32, fp32.onnx"
    artifact = "fp32"


@register
class OpenVINOBF16(_OpenVINO):
    name = "openvino_bf16"
    precision = Precision.bf16
    description = "OpenVINO CPU, INFERENCE_PRECISION_HINT=bf16, fp32.onnx (only if it runs bf16)"
    artifact = "fp32"
    hint = "bf16"


@register
class OpenVINOINT8(_OpenVINO):
    name = "openvino_int8"
    precision = Precision.int8
    description = "OpenVINO CPU, int8 QDQ model (the IR when the export kept one)"
    artifact = "int8"

    def create(self, ctx: RunnerContext) -> Runner:
        ir = ctx.manifest.find("int8_ir")  # the export keeps it only where it runs faster
        path = self.artifact_path(ctx, ir.name if ir else None)
        return openvino.OpenVINORunner(path, self.hint, ctx.threads)
