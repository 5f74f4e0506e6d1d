"""Build and gate every artifact of one export inside a staging directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from gendeploy.errors import QualityError, ValidationError
from gendeploy.export import fp16_islands, gate, int8, onnx_graph
from gendeploy.export.options import ExportOptions
from gendeploy.export.quality_gate import (
    NONFINITE,
    QualityConfig,
    QualityGate,
    QualityResult,
    model_facts,
)
from gendeploy.export.source import LoadedModel, make_artifact
from gendeploy.export.tensorrt_build import build_engine
from gendeploy.manifest import Artifact, ArtifactKind, OutputKind, Precision
from gendeploy.runtime.base import Runner
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.inputs import WithDefaults, complete_feeds
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner
from gendeploy.runtime.openvino import OpenVINORunner
from gendeploy.runtime.tensorrt import TensorRTRunner

# where FP16 ONNX artifacts are judged: ORT's CPU provider would compute them in FP32
FP16_EMULATED = "onnxruntime CPU, FP16 storage emulated (fp16_islands.emulate_fp16_storage)"


def build_artifacts(
    loaded: LoadedModel,
    options: ExportOptions,
    staged: Path,
    engine_status: str,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> tuple[list[Artifact], list[dict[str, str]], dict[str, str]]:
    """Returns (gated artifacts, skipped artifacts with reasons, extra versions)."""
    clock = _Clock(timings)
    with clock("reference"):
        reference = gate.eager_reference(
            loaded.module,
            loaded.latent_dim,
            loaded.num_classes,
            options.max_batch,
            interface=loaded.interface,
        )
    artifacts: list[Artifact] = []
    uint8 = options.output is OutputKind.uint8
    # a float artifact's outputs, kept for the gate of the uint8 head added to it
    float_outputs: dict[str, list[np.ndarray]] = {}
    quality: QualityGate | None = None
    if options.fp16 or options.int8:  # FP32's samples, drawn once for every reduced precision
        with clock("quality_reference"):
            quality = QualityGate(
                WithDefaults(EagerRunner(loaded.module), loaded.interface).run,
                model_facts(
                    loaded.source, loaded.latent_dim, loaded.num_classes, loaded.image_shape
                ),
                QualityConfig(
                    seeds=options.quality_seeds,
                    max_frechet_ratio=options.max_frechet_ratio,
                    batch=min(64, options.max_batch),
                ),
                reference_module=loaded.module,
            )

    def add_onnx(
        name: str,
        model: onnx.ModelProto | None,
        extra: dict[str, Any],
        kind: ArtifactKind = ArtifactKind.onnx,
        judged: QualityResult | None = None,
    ) -> Artifact:
        """Save, gate and add one ONNX / IR artifact. ``judged``: the quality gate's verdict on
        this very model from the run that decided it (FP16 storage emulated; INT8 on OpenVINO),
        recorded instead of judging it again."""
        suffix = ".xml" if kind is ArtifactKind.openvino else ".onnx"
        artifact = make_artifact(loaded, name, kind, f"{name}{suffix}")
        path = staged / artifact.path
        if model is not None:
            onnx_graph.save(model, path)
        if kind is ArtifactKind.onnx:
            extra = {**extra, "opset": onnx_graph.opset(onnx.load(str(path)))}
        artifact.extra = extra
        # INT8 is gated on the engine that executes it in INT8 (OpenVINO); the rest on ORT
        runner: OpenVINORunner | OnnxRuntimeRunner = (
            OpenVINORunner(path)
            if artifact.precision is Precision.int8
            else OnnxRuntimeRunner(path)
        )
        with clock(f"validate_{name}"), runner:
            artifact.validation = _gate(runner, artifact, reference, options, say, float_outputs)
            if isinstance(runner, OpenVINORunner):
                artifact.validation["runner"] = f"openvino CPU ({runner.precision})"
                artifact.extra["executed"] = runner.layer_precisions
                if "int8" not in runner.precision.split("+"):
                    raise ValidationError(
                        f"gate failed for {name!r}: OpenVINO ran every layer in "
                        f"{runner.precision}, none in INT8; nothing published"
                    )
            else:
                provider = runner.providers[0]
                artifact.validation["runner"] = f"onnxruntime {provider}" + (
                    " (computes the FP16 graph in FP32: FP16's figures are quality_runner's)"
                    if artifact.precision is Precision.fp16 and provider == "CPUExecutionProvider"
                    else ""
                )
            if uint8 and not name.endswith("uint8"):
                float_outputs[name] = gate.outputs(runner, reference, options.max_batch)
            if quality is not None and artifact.precision.reduced:
                if artifact.precision is Precision.fp16:
                    artifact.validation["quality_runner"] = FP16_EMULATED
                    if judged is None:
                        assert model is not None
                        judged = _judge_fp16_storage(quality, model, staged, loaded)
                if judged is not None:
                    _record(judged, artifact, say)
                else:
                    _judge(quality, WithDefaults(runner, loaded.interface), artifact, say)
        artifacts.append(artifact)
        return artifact

    with clock("export_fp32"):
        exported = onnx_graph.export_fp32(
            loaded.module,
            staged / "fp32.onnx",
            loaded.latent_dim,
            loaded.num_classes,
            options.max_batch,
            inputs=loaded.interface.input_specs(loaded.latent_dim, loaded.num_classes),
        )
    if exported.symbolic_batch:
        say(
            "the model turns the batch size into a constant (int(x.shape[0])): captured at batch "
            "2 and 3 and made symbolic again"
        )
    for rewrite in exported.rewrites:
        say(f"rewrote the batch-grouped convolution {rewrite.layer} ({rewrite.form} form)")
    say(f"exported fp32.onnx ({exported.exporter} exporter)")
    fp32_extra: dict[str, Any] = {"exporter": exported.exporter}
    if exported.rewrites:
        fp32_extra["rewrites"] = [asdict(r) for r in exported.rewrites]
    if exported.static_batch:
        fp32_extra["static_batch"] = 1
    if exported.symbolic_batch:
        fp32_extra["symbolic_batch"] = "made symbolic again (symbolic_batch.py)"
    add_onnx("fp32", None, fp32_extra)
    fp32 = onnx.load(str(staged / "fp32.onnx"))
    if uint8:
        add_onnx("uint8", onnx_graph.add_uint8_head(fp32), {"derived_from": "fp32"})
    if options.fp16:
        decided: list[tuple[dict[str, Any], QualityResult | None]] = []
        with clock("convert_fp16"):
            fp16, islands = fp16_islands.convert(
                fp32,
                fp16_islands.range_feeds(reference.feeds),
                _fp16_acceptance(loaded, options, staged, reference, quality, decided),
            )
        for reason, why in [
            ("normalization", "normalization chains"),
            ("range", "values beyond FP16's range"),
        ]:
            kept = [i for i in islands if i.reason == reason]
            if kept:
                shown = ", ".join(sorted({f"{i.layer or 'top level'} {i.op}" for i in kept}))
                say(f"fp16: {len(kept)} nodes kept in FP32 ({why}): {shown}")
        emulated_figures, emulated_quality = decided[-1]  # the run that accepted this model
        fp16_extra: dict[str, Any] = {
            "derived_from": "fp32",
            "fp32_ops": onnx_graph.FP32_OPS,
            "fp32_decided_by": "gate on FP16 storage emulated with ONNX Runtime CPU",
            # the deciding run's tensor figures and (validation.quality) its quality figures:
            # ORT's own CPU run of fp16.onnx (validation) computes the FP16 graph in FP32
            "fp16_storage_emulated_gate": emulated_figures,
        }
        add_onnx(
            "fp16",
            fp16,
            {**fp16_extra, "fp32_layers": [asdict(i) for i in islands]},
            judged=emulated_quality,
        )
        if uint8:
            add_onnx("fp16_uint8", onnx_graph.add_uint8_head(fp16), {"derived_from": "fp16"})
    skipped: list[dict[str, str]] = []
    if options.int8:
        assert quality is not None
        before = len(artifacts)
        try:
            _add_int8(loaded, options, staged, fp32, quality, reference, add_onnx, clock, say)
        except QualityError as e:
            if not options.int8_optional:
                raise
            for added in artifacts[before:]:  # an INT8 variant gated before the refused one
                for file in added.files():
                    (staged / file).unlink(missing_ok=True)
            del artifacts[before:]
            skipped.append({"name": "int8", "reason": str(e)})
            say(f"skipped int8: {e}")
    versions: dict[str, str] = {}
    sources = ("fp16", "fp16_uint8", "int8", "int8_uint8")
    engines = [a.name for a in artifacts if a.name in sources]
    for source in engines:
        name = f"trt_{source}"
        if engine_status:
            skipped.append({"name": name, "reason": engine_status})  # the CLI says it, once
            continue
        onnx_file = staged / f"{source}.onnx"
        if source.startswith("int8"):  # TensorRT's Q/DQ are signed INT8 only
            onnx_file = staged / f".{source}_tensorrt.onnx"
            signed = int8.signed_for_tensorrt(onnx.load(str(staged / f"{source}.onnx")))
            onnx_graph.save(signed, onnx_file)
        artifacts.append(
            _build_engine(
                loaded, options, staged, onnx_file, name, reference, clock, say, float_outputs
            )
        )
        if onnx_file.name.startswith("."):
            onnx_file.unlink()
            artifacts[-1].extra["source_onnx"] = (
                f"{source}.onnx, activation quantizers re-expressed as signed INT8 "
                "(int8.signed_for_tensorrt)"
            )
        if quality is not None:
            with TensorRTRunner(staged / artifacts[-1].path) as engine:
                _judge(quality, WithDefaults(engine, loaded.interface), artifacts[-1], say)
        versions["tensorrt"] = artifacts[-1].extra["tensorrt"]
    return artifacts, skipped, versions


def _fp16_acceptance(
    loaded: LoadedModel,
    options: ExportOptions,
    staged: Path,
    reference: gate.Reference,
    quality: QualityGate | None,
    decided: list[tuple[dict[str, Any], QualityResult | None]],
) -> fp16_islands.Accept:
    """The checks that decide whether a candidate FP16 model is good enough, run with FP16
    storage emulated: the tensor gate (values, NaN/Inf, PSNR, batch invariance), then the quality
    gate on what it draws (per-seed PSNR over 1,000 seeds, the distribution check). The figures of
    the run that accepts a model are appended to ``decided``: they are the FP16 figures recorded
    (ONNX Runtime's CPU provider otherwise computes the FP16 graph in FP32)."""

    def accept(model: onnx.ModelProto) -> fp16_islands.Refusal | None:
        artifact = make_artifact(loaded, "fp16", ArtifactKind.onnx, ".fp16-candidate.onnx")
        path = staged / artifact.path
        onnx_graph.save(fp16_islands.emulate_fp16_storage(model), path)
        try:
            with OnnxRuntimeRunner(path, optimize=False) as runner:
                figures = gate.validate(runner, artifact, reference, options.max_batch)
                candidate = WithDefaults(runner, loaded.interface)
                judged = quality.judge(candidate.run, Precision.fp16) if quality else None
        except ValidationError as e:
            return fp16_islands.Refusal(e, overflow="NaN/Inf" in str(e))
        finally:
            path.unlink(missing_ok=True)
        if judged is not None and not judged.passed:
            try:
                judged.check("fp16")
            except QualityError as e:
                return fp16_islands.Refusal(e, overflow=NONFINITE in judged.failures)
        decided.append((figures, judged))
        return None

    return accept


def _judge_fp16_storage(
    quality: QualityGate, model: onnx.ModelProto, staged: Path, loaded: LoadedModel
) -> QualityResult:
    """The quality gate on an FP16 model with FP16 storage emulated (what an FP16 engine does)."""
    path = staged / ".fp16-emulated.onnx"
    onnx_graph.save(fp16_islands.emulate_fp16_storage(model), path)
    try:
        with OnnxRuntimeRunner(path, optimize=False) as runner:
            return quality.judge(WithDefaults(runner, loaded.interface).run, Precision.fp16)
    finally:
        path.unlink(missing_ok=True)


def _build_engine(
    loaded: LoadedModel,
    options: ExportOptions,
    staged: Path,
    onnx_file: Path,
    name: str,
    reference: gate.Reference,
    clock: _Clock,
    say: Callable[[str], None],
    float_outputs: dict[str, list[np.ndarray]],
) -> Artifact:
    artifact = make_artifact(loaded, name, ArtifactKind.tensorrt, f"{name}.plan")
    with clock(f"build_{name}"):
        artifact.extra = build_engine(
            onnx_file,
            staged / artifact.path,
            artifact.inputs,
            1,
            options.opt_batch,
            options.max_batch,
        )
    runner = TensorRTRunner(staged / artifact.path)
    with clock(f"validate_{name}"), runner:
        artifact.validation = _gate(runner, artifact, reference, options, say, float_outputs)
        artifact.validation["runner"] = f"tensorrt ({runner.precision})"
        artifact.extra["executed"] = runner.layer_precisions
        wanted = artifact.precision.value  # "fp16" / "int8": what the label promises
        if runner.layer_precisions and wanted not in runner.precision.split("+"):
            raise ValidationError(
                f"gate failed for {name!r}: TensorRT's engine inspector shows its weighted "
                f"layers in {runner.precision} ({runner.layer_precisions}), none in {wanted}; "
                "nothing published"
            )
        if options.output is OutputKind.uint8 and not name.endswith("uint8"):
            float_outputs[name] = gate.outputs(runner, reference, options.max_batch)
    return artifact


def _add_int8(
    loaded: LoadedModel,
    options: ExportOptions,
    staged: Path,
    fp32: onnx.ModelProto,
    quality: QualityGate,
    reference: gate.Reference,
    add_onnx: Callable[..., Artifact],
    clock: _Clock,
    say: Callable[[str], None],
) -> None:
    """int8.onnx (QDQ, gated, with the layer-by-layer fallback), its uint8 head, and the IR when
    OpenVINO runs the IR measurably faster than the QDQ ONNX."""
    batch = int8.calibration_batch(options.max_batch)
    items = [  # truncation and noise inputs, where the generator has them, as served by default
        complete_feeds(item, loaded.interface)
        for item in int8.calibration_feeds(
            loaded.latent_dim, loaded.num_classes, options.calibration, batch
        )
    ]
    candidate = staged / ".candidate_int8.onnx"

    probe = make_artifact(loaded, "int8", ArtifactKind.onnx, candidate.name)

    def judge(model: onnx.ModelProto) -> QualityResult:
        """The quality gate and the tensor gate together: the fallback stops when both pass."""
        onnx.save_model(model, str(candidate), save_as_external_data=False)
        with OpenVINORunner(candidate) as runner:
            result = quality.judge(WithDefaults(runner, loaded.interface).run, Precision.int8)
            try:
                gate.validate(runner, probe, reference, options.max_batch)
            except ValidationError as e:
                failure = "tensor gate: " + str(e).split(": ", 1)[-1].split("; figures")[0]
                result = replace(result, failures=(*result.failures, failure))
        return result

    def error(model: onnx.ModelProto) -> float:
        """The fallback's ranking measure: normalized MSE against FP32 on a few seeds."""
        onnx.save_model(model, str(candidate), save_as_external_data=False)
        with OpenVINORunner(candidate) as runner:
            return quality.nmse(WithDefaults(runner, loaded.interface).run, int8.RANKING_SEEDS)

    with clock("int8_quantize"):
        try:
            result = int8.quantize_gated(
                fp32, items, judge, error, say, fallback=options.int8_fallback
            )
        finally:
            candidate.unlink(missing_ok=True)
    say(f"quantized int8 ({options.calibration} calibration samples): {result.quality.summary()}")
    model = result.model
    extra = {
        "derived_from": "fp32",
        "calibration": {
            "samples": options.calibration,
            "batch": batch,
            "seed": int8.CALIBRATION_SEED,
            "inputs": "z ~ N(0, I), labels uniform",
            "preset": "performance (symmetric), weighted layers only",
        },
        # read from the published graph: exactly which layers run INT8 and which stayed float
        "int8_layers": int8.describe_layers(model, int8.int8_layers(model)),
        "float_layers": int8.describe_layers(model, int8.float_layers(model)),
        "other_quantized_nodes": int8.other_quantized(model),
        "fallback": result.attempts if len(result.attempts) > 1 else [],
        "fallback_ranking": result.ranking,
    }
    if not options.int8_fallback:
        extra["fallback_skipped"] = "asked for (ExportOptions.int8_fallback=False)"
    # the fallback's last gate pass ran this very model on OpenVINO: its verdict is recorded
    artifact = add_onnx("int8", model, extra, judged=result.quality)
    if options.output is OutputKind.uint8:
        add_onnx("int8_uint8", onnx_graph.add_uint8_head(result.model), {"derived_from": "int8"})
    with clock("int8_ir"):
        artifact.extra["openvino_ir"] = _ir_if_faster(loaded, options, staged, add_onnx)


def _ir_if_faster(
    loaded: LoadedModel,
    options: ExportOptions,
    staged: Path,
    add_onnx: Callable[..., Artifact],
) -> dict[str, Any]:
    """Convert int8.onnx to IR; keep it (gated, as ``int8_ir``) only when it runs >= 5% faster."""
    ir = staged / "int8_ir.xml"
    int8.save_ir(staged / "int8.onnx", ir)
    feeds = gate.gate_inputs(loaded.latent_dim, loaded.num_classes, (0,), loaded.interface)[0]
    feeds = {k: v[: options.opt_batch] for k, v in feeds.items()}
    onnx_s = int8.time_openvino(staged / "int8.onnx", feeds)
    ir_s = int8.time_openvino(ir, feeds)
    kept = ir_s < 0.95 * onnx_s
    decision = {
        "batch": len(feeds["z"]),
        "qdq_onnx_ms": round(onnx_s * 1e3, 3),
        "ir_ms": round(ir_s * 1e3, 3),
        "kept": kept,
    }
    if kept:
        add_onnx("int8_ir", None, {"derived_from": "int8"}, ArtifactKind.openvino)
    else:
        ir.unlink()
        ir.with_suffix(".bin").unlink(missing_ok=True)
    return decision


def _judge(
    quality: QualityGate, runner: Runner, artifact: Artifact, say: Callable[[str], None]
) -> None:
    """The quality gate on what the artifact draws; raises ``QualityError`` (nothing published)."""
    _record(quality.judge(runner.run, artifact.precision), artifact, say)


def _record(result: QualityResult, artifact: Artifact, say: Callable[[str], None]) -> None:
    artifact.validation["quality"] = result.to_dict()
    result.check(artifact.name)
    say(f"quality gate passed {artifact.name}: {result.summary()}")


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
