"""Build and gate every artifact of one export inside a staging directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from gendeploy.export import gate, onnx_graph
from gendeploy.export.api import ExportOptions, OutputKind, make_artifact
from gendeploy.export.manifest import Artifact, ArtifactKind
from gendeploy.export.source import LoadedModel
from gendeploy.runtime.base import Runner


def build_artifacts(
    loaded: LoadedModel,
    options: ExportOptions,
    staged: Path,
    engine_status: str,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> tuple[list[Artifact], list[dict[str, str]], dict[str, str]]:
    """Returns (gated artifacts, skipped artifacts with reasons, extra versions)."""
    from gendeploy.runtime.onnxrt import OnnxRuntimeRunner

    clock = _Clock(timings)
    with clock("reference"):
        reference = gate.eager_reference(
            loaded.module, loaded.latent_dim, loaded.num_classes, options.max_batch
        )
    artifacts: list[Artifact] = []
    uint8 = options.output is OutputKind.uint8
    # a float artifact's outputs, kept for the gate of the uint8 head added to it
    float_outputs: dict[str, list[np.ndarray]] = {}

    def add_onnx(name: str, model: onnx.ModelProto | None, extra: dict[str, Any]) -> None:
        artifact = make_artifact(loaded, name, ArtifactKind.onnx, f"{name}.onnx")
        path = staged / artifact.path
        if model is not None:
            onnx_graph.save(model, path)
        artifact.extra = {**extra, "opset": onnx_graph.opset(onnx.load(str(path)))}
        runner = OnnxRuntimeRunner(path)
        with clock(f"validate_{name}"), runner:
            artifact.validation = _gate(runner, artifact, reference, options, say, float_outputs)
            artifact.validation["runner"] = f"onnxruntime {runner.providers[0]}"
            if uint8 and not name.endswith("uint8"):
                float_outputs[name] = gate.outputs(runner, reference, options.max_batch)
        artifacts.append(artifact)

    with clock("export_fp32"):
        exporter = onnx_graph.export_fp32(
            loaded.module,
            staged / "fp32.onnx",
            loaded.latent_dim,
            loaded.num_classes,
            options.max_batch,
        )
    say(f"exported fp32.onnx ({exporter} exporter)")
    add_onnx("fp32", None, {"exporter": exporter})
    fp32 = onnx.load(str(staged / "fp32.onnx"))
    if uint8:
        add_onnx("uint8", onnx_graph.add_uint8_head(fp32), {"derived_from": "fp32"})
    if options.fp16:
        with clock("convert_fp16"):
            fp16 = onnx_graph.convert_fp16(fp32)
        add_onnx("fp16", fp16, {"derived_from": "fp32", "fp32_ops": onnx_graph.FP32_OPS})
        if uint8:
            add_onnx("fp16_uint8", onnx_graph.add_uint8_head(fp16), {"derived_from": "fp16"})

    skipped: list[dict[str, str]] = []
    versions: dict[str, str] = {}
    engines = [a.name for a in artifacts if a.name.startswith("fp16")] if options.fp16 else []
    for source in engines:
        name = f"trt_{source}"
        if engine_status:
            skipped.append({"name": name, "reason": engine_status})  # the CLI says it, once
            continue
        artifacts.append(
            _build_engine(
                loaded, options, staged, source, name, reference, clock, say, float_outputs
            )
        )
        versions["tensorrt"] = artifacts[-1].extra["tensorrt"]
    return artifacts, skipped, versions


def _build_engine(
    loaded: LoadedModel,
    options: ExportOptions,
    staged: Path,
    source: str,
    name: str,
    reference: gate.Reference,
    clock: _Clock,
    say: Callable[[str], None],
    float_outputs: dict[str, list[np.ndarray]],
) -> Artifact:
    from gendeploy.export.tensorrt_build import build_engine
    from gendeploy.runtime.tensorrt import TensorRTRunner

    artifact = make_artifact(loaded, name, ArtifactKind.tensorrt, f"{name}.plan")
    with clock(f"build_{name}"):
        artifact.extra = build_engine(
            staged / f"{source}.onnx",
            staged / artifact.path,
            artifact.inputs,
            1,
            options.opt_batch,
            options.max_batch,
        )
    runner = TensorRTRunner(staged / artifact.path)
    with clock(f"validate_{name}"), runner:
        artifact.validation = _gate(runner, artifact, reference, options, say, float_outputs)
        artifact.validation["runner"] = "tensorrt"
        if options.output is OutputKind.uint8 and not name.endswith("uint8"):
            float_outputs[name] = gate.outputs(runner, reference, options.max_batch)
    return artifact


def _gate(
    runner: Runner,
    artifact: Artifact,
    reference: gate.Reference,
    options: ExportOptions,
    say: Callable[[str], None],
    float_outputs: dict[str, list[np.ndarray]],
) -> dict[str, Any]:
    # "uint8" is the fp32 graph's head; "fp16_uint8" fp16's; "trt_fp16_uint8" trt_fp16's
    head_of = artifact.name.removesuffix("_uint8") if artifact.name.endswith("_uint8") else "fp32"
    is_uint8 = artifact.name.endswith("uint8")
    figures = gate.validate(
        runner,
        artifact,
        reference,
        options.max_batch,
        float_outputs.get(head_of) if is_uint8 else None,
    )
    diff = figures.get("max_abs_diff")
    shown = f"max|diff| {diff:.2e}, " if diff is not None else ""
    say(
        f"gate passed {artifact.name}: {shown}PSNR {figures['psnr_db']} dB, "
        f"max {figures['max_level_diff']} level(s), batch invariance "
        f"{figures['batch_invariance_max_diff']:.2e}"
    )
    return figures


class _Clock:
    """``with clock("step"):`` adds the step's wall time to ``timings``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, step: str) -> _Step:
        return _Step(self.timings, step)


class _Step:
    def __init__(self, timings: dict[str, float], step: str) -> None:
        self.timings, self.step = timings, step

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.step] = (
            self.timings.get(self.step, 0.0) + time.perf_counter() - self.start
        )
