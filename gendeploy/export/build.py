"""Build and gate every artifact of one export inside a staging directory, row by row of the plan.

``build_artifacts`` walks ``manifest.PLAN`` in order. A variant is built when the options ask for
it and the artifact it is derived from was built: by its builder (``builder_for``: an engine from
its ONNX, a uint8 head on its float graph, else the variant's own), saved, gated on its runtime
by the gate its row names (``_gate``), and added to the export. What one build has made so far
is one ``Build`` object.

Adding a precision: its rows in ``PLAN``, its builder in ``BUILDERS`` (the rows derived from it,
uint8 heads and engines, reuse theirs), and what ``ExportOptions.wants`` asks of it.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from gendeploy.errors import (
    BatchInvarianceError,
    ExportError,
    GateError,
    GendeployError,
    NameMismatchError,
    NonFiniteError,
    QualityError,
    ShapeMismatchError,
    UnexecutedPrecisionError,
    ValidationError,
)
from gendeploy.export import fp16_islands, gate, image_gate, image_graph, int8, onnx_graph
from gendeploy.export.loaded import ImageFacts
from gendeploy.export.options import ExportOptions
from gendeploy.export.quality_gate import (
    Failure,
    Judge,
    QualityConfig,
    QualityGate,
    TensorRefusal,
    Verdict,
    model_facts,
    seed_count,
)
from gendeploy.export.source import LoadedModel, make_artifact
from gendeploy.export.tensorrt_build import build_engine
from gendeploy.manifest import (
    INPUT_IMAGES,
    PLAN,
    Artifact,
    ArtifactKind,
    Gate,
    ImageIO,
    OutputKind,
    Precision,
    Runtime,
    Variant,
)
from gendeploy.runtime.base import Feeds, Runner
from gendeploy.runtime.inputs import WithDefaults, complete_feeds
from gendeploy.runtime.onnxrt import CPU, OnnxRuntimeRunner
from gendeploy.runtime.openvino import OpenVINORunner
from gendeploy.runtime.tensorrt import TensorRTRunner

# where FP16 ONNX artifacts are judged: ORT's CPU provider would compute them in FP32
FP16_EMULATED = "onnxruntime CPU, FP16 storage emulated (fp16_islands.emulate_fp16_storage)"
Say = Callable[[str], None]


@dataclass
class Built:
    """What an export's build made: its gated artifacts, the ones it did not make and why, and
    the versions of the tools that made them (TensorRT's)."""

    artifacts: list[Artifact]
    skipped: list[dict[str, str]]
    versions: dict[str, str]
    image: ImageIO | None = None  # an image-to-image model: what its probe and tile check found


def build_artifacts(
    loaded: LoadedModel,
    options: ExportOptions,
    staged: Path,
    engine_status: str,
    timings: dict[str, float],
    say: Say,
) -> Built:
    """Every artifact of the plan the options ask for, gated; ``engine_status``: why no TensorRT
    engine can be built here ('' when one can)."""
    build = Build.start(loaded, options, staged, Clock(timings), say)
    for variant in PLAN:
        if build.wanted(variant):
            build.make(variant, engine_status)
    return Built(list(build.artifacts.values()), build.skipped, build.versions, build.image)


@dataclass
class Clock:
    """``with clock("step"):`` adds the step's wall time to ``timings``."""

    timings: dict[str, float]

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - start


@dataclass
class Build:
    """One export's build: what it is given, and what it has made so far."""

    loaded: LoadedModel
    options: ExportOptions
    staged: Path
    clock: Clock
    say: Say
    reference: gate.Reference  # eager's outputs on the tensor gate's inputs
    image: ImageIO | None = None  # an image-to-image model's probe, tile and gate shapes
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # gated, in plan order
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"[, ...]}
    versions: dict[str, str] = field(default_factory=dict)
    graphs: dict[str, onnx.ModelProto] = field(default_factory=dict)  # what derived ONNX start from
    # a float artifact's outputs on the gate's inputs, for the gate of the uint8 head added to it
    float_outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    refused: set[Precision] = field(default_factory=set)  # reduced precisions refused
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # the quality gate's, by artifact
    _quality: Judge | None = None  # FP32's samples, drawn once on first use

    @classmethod
    def start(
        cls, loaded: LoadedModel, options: ExportOptions, staged: Path, clock: Clock, say: Say
    ) -> Build:
        """The reference every tensor gate compares with: eager's outputs on its fixed inputs
        (an image model's: test images at several shapes, and FP32's pictures for the quality
        gate when a reduced precision is asked for)."""
        if loaded.image is not None:
            reduced = any(options.wants(v) and v.gate is not Gate.tensor for v in PLAN)
            with clock("reference"):
                reference, judge, image = image_gate.prepare(
                    loaded, options.tile, options.tile_margin, options.max_batch, reduced
                )
            return cls(loaded, options, staged, clock, say, reference, image=image, _quality=judge)
        with clock("reference"), _one_line("reference", "eager"):
            reference = gate.eager_reference(
                loaded.module,
                loaded.latent_dim,
                loaded.num_classes,
                options.max_batch,
                interface=loaded.interface,
            )
        return cls(loaded, options, staged, clock, say, reference)

    def quality_gate(self) -> Judge:
        """FP32's samples for the quality gate, drawn once, from the gated fp32.onnx
        (``quality_reference``; an image model's come from eager, with its reference)."""
        if self._quality is None:
            with self.clock("quality_reference"):
                self._quality = quality_reference(self)
        return self._quality

    def wanted(self, variant: Variant) -> bool:
        """Asked for, not refused, and what it is derived from was built."""
        return (
            self.options.wants(variant)
            and variant.precision not in self.refused
            and (variant.derived_from is None or variant.derived_from in self.artifacts)
        )

    def make(self, variant: Variant, engine_status: str) -> None:
        """Build, gate and add one variant (an IR not faster than its ONNX adds nothing). A
        reduced precision that fails is refused (``refuse``) unless the options are strict, an
        engine under --require-engine; FP32 (what all derive from) fails the export."""
        if variant.kind is ArtifactKind.tensorrt and engine_status:
            self.skipped.append({"name": variant.name, "reason": engine_status})  # said once
            return
        try:
            with _one_line(variant.name, variant.file):
                artifact = builder_for(variant)(self, variant)
        except GendeployError as e:  # a disk error (OSError) fails every precision alike
            engine = variant.kind is ArtifactKind.tensorrt and self.options.require_engine
            if variant.precision is Precision.fp32 or self.options.strict or engine:
                raise
            self.refuse(variant, e)
            return
        if artifact is not None:
            self.artifacts[variant.name] = artifact

    def refuse(self, variant: Variant, error: GendeployError) -> None:
        """A reduced precision that failed: every variant of it made so far goes (files too),
        the rest are not built, and the manifest says which, where and why."""
        for other in PLAN:
            if other.precision is variant.precision:
                self.artifacts.pop(other.name, None)
                for file in make_artifact(self.loaded, other).files():
                    (self.staged / file).unlink(missing_ok=True)
        self.refused.add(variant.precision)
        root = PLAN.root(variant).name
        self.skipped.append(
            {
                "name": root,
                "reason": str(error),
                "stage": variant.name,
                "error": type(error).__name__,
            }
        )
        self.say(f"refused {root} ({variant.name}): {error}")

    def source(self, variant: Variant) -> Artifact:
        """The built artifact ``variant`` is derived from."""
        assert variant.derived_from is not None
        return self.artifacts[variant.derived_from]


@contextlib.contextmanager
def _one_line(stage: str, what: str) -> Iterator[None]:
    """An exception that is no ``GendeployError`` (a bug of ours or of a library, a model that
    fails where its probes passed) becomes one ``ExportError`` line naming the stage, the
    artifact and the function it came from: no export ends in a traceback."""
    try:
        yield
    except (GendeployError, OSError):
        raise
    except Exception as e:
        raise internal_error(stage, what, e) from e


def internal_error(stage: str, what: str, e: Exception) -> ExportError:
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if f"{os.sep}gendeploy{os.sep}" in f.filename]
    where = (ours or frames)[-1].name if frames else "?"
    detail = " ".join(str(e).split())[:160]
    return ExportError(
        f"{stage}: internal error building {what} in {where} ({type(e).__name__}: {detail}); "
        "report this model"
    )


def quality_reference(build: Build) -> QualityGate:
    """FP32's samples drawn from the published fp32.onnx on ONNX Runtime, the runtime its gate
    ran it on (it equals eager within FP32's tolerance there), 2 x ``seed_count`` seeds: eager
    drew them before, at 1.5-8x the cost (a StyleGAN3 16x16: 301 ms per image, ORT 60 ms)."""
    loaded, options = build.loaded, build.options
    fp32 = build.artifacts["fp32"]
    batch = min(64, options.max_batch)
    with OnnxRuntimeRunner(build.staged / fp32.path) as runner:
        run = WithDefaults(runner, loaded.interface).run
        asked = int(options.fp16) + int(options.int8)
        seeds, why = seed_count(options.quality_seeds, _seconds_per_image(runner, build), asked)
        build.say(
            f"quality reference: FP32's images on 2 x {seeds} seeds, drawn from {fp32.path} "
            f"(ONNX Runtime, gated against eager) ({why})"
        )
        return QualityGate(
            run,
            model_facts(loaded.source, loaded.latent_dim, loaded.num_classes, loaded.image_shape),
            QualityConfig(seeds=seeds, max_frechet_ratio=options.max_frechet_ratio, batch=batch),
        )


def _seconds_per_image(runner: Runner, build: Build) -> float:
    """What one FP32 image costs on ``runner``: the tensor gate's inputs, once warm, the fastest
    of three passes (one pass read 24 to 32 ms on one quiet machine, and the seed count
    changed with it)."""
    runner.run({k: v[:1] for k, v in build.reference.feeds[0].items()})
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        images = gate.outputs(runner, build.reference, build.options.max_batch)
        passes.append((time.perf_counter() - started) / max(sum(len(i) for i in images), 1))
    return min(passes)


Builder = Callable[[Build, Variant], "Artifact | None"]


def builder_for(variant: Variant) -> Builder:
    """How a variant is made: an engine from its ONNX, a uint8 head on its float graph, else by
    its own builder."""
    if variant.kind is ArtifactKind.tensorrt:
        return _engine
    if variant.head is OutputKind.uint8:
        return _uint8_head
    return BUILDERS[variant.name]


# ---- the builders ------------------------------------------------------------------------------


def _export_fp32(build: Build, variant: Variant) -> Artifact:
    """torch -> ONNX (``onnx_graph.export_fp32``; ``image_graph.export_image`` for an
    image-to-image model), the graph every other artifact derives from."""
    loaded, say = build.loaded, build.say
    if loaded.image is not None:
        return _export_image(build, variant, loaded.image)
    with build.clock("export_fp32"):
        exported = onnx_graph.export_fp32(
            loaded.module,
            build.staged / variant.file,
            loaded.latent_dim,
            loaded.num_classes,
            build.options.max_batch,
            inputs=loaded.interface.input_specs(loaded.latent_dim, loaded.num_classes),
        )
    if exported.symbolic_batch:
        say(
            "the model turns the batch size into a constant (int(x.shape[0])): captured at batch "
            "2 and 3 and made symbolic again"
        )
    for rewrite in exported.rewrites:
        say(f"rewrote the batch-grouped convolution {rewrite.layer} ({rewrite.form} form)")
    say(f"exported {variant.file} ({exported.exporter} exporter)")
    extra: dict[str, Any] = {"exporter": exported.exporter}
    if exported.rewrites:
        extra["rewrites"] = [asdict(r) for r in exported.rewrites]
    if exported.static_batch:
        extra["static_batch"] = 1
    if exported.symbolic_batch:
        extra["symbolic_batch"] = "made symbolic again (symbolic_batch.py)"
    artifact = _publish_graph(build, variant, None, extra)
    build.graphs[variant.name] = onnx.load(str(build.staged / artifact.path))
    return artifact


def _export_image(build: Build, variant: Variant, facts: ImageFacts) -> Artifact:
    example = image_graph.example_input(facts.in_channels, facts.size_multiple, facts.min_side)
    with build.clock("export_fp32"):
        exported = image_graph.export_image(
            build.loaded.module, build.staged / variant.file, example
        )
    build.say(f"exported {variant.file} ({exported.exporter} exporter, N, H and W dynamic)")
    artifact = _publish_graph(build, variant, None, {"exporter": exported.exporter})
    build.graphs[variant.name] = onnx.load(str(build.staged / artifact.path))
    return artifact


def _uint8_head(build: Build, variant: Variant) -> Artifact:
    """The rendering to uint8 NHWC added to the graph the variant is derived from."""
    head = onnx_graph.add_uint8_head(build.graphs[build.source(variant).name])
    return _publish_graph(build, variant, head, {})


def _convert_fp16(build: Build, variant: Variant) -> Artifact:
    """FP16 with FP32 islands where values or normalizations need them (``fp16_islands``),
    decided by the gates on FP16 storage emulated."""
    accept = _FP16Acceptance(build, variant)
    with build.clock("convert_fp16"):
        fp16, islands = fp16_islands.convert(
            build.graphs[build.source(variant).name],
            fp16_islands.range_feeds(build.reference.feeds),
            accept,
        )
    for reason, why in [
        ("normalization", "normalization chains"),
        ("range", "values beyond FP16's range"),
    ]:
        kept = [i for i in islands if i.reason == reason]
        if kept:
            shown = ", ".join(sorted({f"{i.layer or 'top level'} {i.op}" for i in kept}))
            build.say(f"fp16: {len(kept)} nodes kept in FP32 ({why}): {shown}")
    extra: dict[str, Any] = {
        "fp32_ops": onnx_graph.FP32_OPS,
        "fp32_decided_by": "gate on FP16 storage emulated with ONNX Runtime CPU",
        # the deciding run's tensor figures and (validation.quality) its quality figures:
        # ORT's own CPU run of fp16.onnx (validation) computes the FP16 graph in FP32
        "fp16_storage_emulated_gate": accept.figures,
        "fp32_layers": [asdict(i) for i in islands],
    }
    artifact = _publish_graph(build, variant, fp16, extra, judged=accept.judged)
    build.graphs[variant.name] = fp16
    return artifact


class _FP16Acceptance:
    """Whether a candidate FP16 model is good enough (``fp16_islands.convert``'s ``accept``), run
    with FP16 storage emulated: the tensor gate (values, NaN/Inf, PSNR, batch invariance), then
    the quality gate on what it draws. The figures of the run that accepts a model are the FP16
    figures recorded (ONNX Runtime's CPU provider otherwise computes the FP16 graph in FP32)."""

    def __init__(self, build: Build, variant: Variant) -> None:
        self.build, self.variant = build, variant
        self.figures: dict[str, Any] = {}
        self.judged: Verdict | None = None

    def __call__(self, model: onnx.ModelProto) -> fp16_islands.Refusal | None:
        build = self.build
        probe = make_artifact(build.loaded, self.variant, ".fp16-candidate.onnx")
        path = build.staged / probe.path
        onnx_graph.save(fp16_islands.emulate_fp16_storage(model), path)
        try:
            with OnnxRuntimeRunner(path) as runner:
                figures = gate.validate(runner, probe, build.reference, build.options.max_batch)
                candidate = WithDefaults(runner, build.loaded.interface)
                judged = build.quality_gate().judge(candidate.run, self.variant.precision)
        except ValidationError as e:
            return fp16_islands.Refusal(e)
        finally:
            path.unlink(missing_ok=True)
        if not judged.passed:
            try:
                judged.check(self.variant.name)
            except QualityError as e:
                return fp16_islands.Refusal(e)
        self.figures, self.judged = figures, judged
        return None


def _quantize_int8(build: Build, variant: Variant) -> Artifact:
    """int8.onnx: NNCF's QDQ, gated, with the layer-by-layer fallback (``int8.quantize_gated``)."""
    options = build.options
    batch = int8.calibration_batch(options.max_batch)
    items, calibrated_on = _calibration(build, batch)
    candidate = _Int8Candidate(build, variant)
    with build.clock("int8_quantize"):
        try:
            result = int8.quantize_gated(
                build.graphs[build.source(variant).name],
                items,
                candidate.judge,
                candidate.nmse,
                build.say,
                fallback=options.int8_fallback,
            )
        finally:
            candidate.path.unlink(missing_ok=True)
    samples = sum(len(next(iter(item.values()))) for item in items)
    build.say(f"quantized int8 ({samples} calibration samples): {result.quality.summary()}")
    model = result.model
    extra: dict[str, Any] = {
        "calibration": {
            "samples": sum(len(next(iter(item.values()))) for item in items),
            "batch": batch,
            "seed": int8.CALIBRATION_SEED,
            "inputs": calibrated_on,
            "preset": "performance (symmetric), weighted layers only",
        },
        # read from the published graph: exactly which layers run INT8 and which stayed float
        "int8_layers": int8.describe_layers(model, int8.int8_layers(model)),
        "float_layers": int8.describe_layers(model, int8.float_layers(model)),
        "filter_layers": int8.filter_layers(model),  # depthwise: float by rule, not by the gate
        "other_quantized_nodes": int8.other_quantized(model),
        "fallback": result.attempts if len(result.attempts) > 1 else [],
        "fallback_ranking": result.ranking,
    }
    if not options.int8_fallback:
        extra["fallback_skipped"] = "asked for (ExportOptions.int8_fallback=False)"
    # the fallback's last gate pass ran this very model on OpenVINO: its verdict is recorded
    artifact = _publish_graph(build, variant, model, extra, judged=result.quality)
    build.graphs[variant.name] = model
    return artifact


def _calibration(build: Build, batch: int) -> tuple[list[Feeds], str]:
    """What NNCF calibrates on, and how the manifest describes it: a generator's own inputs
    (truncation and noise, where it has them, as served by default), an image model's test
    images."""
    options, loaded = build.options, build.loaded
    if loaded.image is not None:
        samples = options.calibration_samples or image_gate.CALIBRATION_IMAGES
        items = image_gate.calibration_feeds(loaded.image, samples, batch)
        side = items[0][INPUT_IMAGES].shape[2]
        return items, f"{loaded.image.test_set} test images, {side} x {side} px"
    items = [
        complete_feeds(item, loaded.interface)
        for item in int8.calibration_feeds(
            loaded.latent_dim, loaded.num_classes, options.calibration, batch
        )
    ]
    return items, "z ~ N(0, I), labels uniform"


# tensor-gate refusals no picture can outweigh: the fallback's candidate is not drawn
_NOT_DRAWN = (BatchInvarianceError, NonFiniteError, NameMismatchError, ShapeMismatchError)


class _Int8Candidate:
    """A candidate INT8 model of the fallback, run on OpenVINO: judged by the quality gate and
    the tensor gate together (the fallback stops when both pass), or ranked by its error."""

    def __init__(self, build: Build, variant: Variant) -> None:
        self.build = build
        self.probe = make_artifact(build.loaded, variant, ".candidate_int8.onnx")
        self.path = build.staged / self.probe.path

    def _runner(self, model: onnx.ModelProto) -> OpenVINORunner:
        onnx.save_model(model, str(self.path), save_as_external_data=False)
        return OpenVINORunner(self.path)

    def judge(self, model: onnx.ModelProto) -> Verdict:
        """The tensor gate first (about a tenth of the quality gate's cost here): a candidate
        whose images change with the batch, hold NaN/Inf or have the wrong names or shape is
        not drawn; one it refuses on its values is, and the pictures have their say."""
        build = self.build
        with self._runner(model) as runner:
            refused: GateError | None = None
            try:
                gate.validate(runner, self.probe, build.reference, build.options.max_batch)
            except _NOT_DRAWN as e:
                return TensorRefusal(e.what)
            except GateError as e:
                refused = e
            result = build.quality_gate().judge(
                WithDefaults(runner, build.loaded.interface).run, self.probe.precision
            )
        if refused is not None:
            result = result.with_failure(Failure(QualityError, f"tensor gate: {refused.what}"))
        return result

    def nmse(self, model: onnx.ModelProto) -> float:
        """The fallback's ranking measure: normalized MSE against FP32 on a few seeds."""
        with self._runner(model) as runner:
            run = WithDefaults(runner, self.build.loaded.interface).run
            return self.build.quality_gate().nmse(run, int8.RANKING_SEEDS)


def _ir_if_faster(build: Build, variant: Variant) -> Artifact | None:
    """The INT8 ONNX converted to OpenVINO IR, kept (gated) only when it runs >= 5% faster; the
    decision is recorded on the ONNX artifact."""
    source = build.source(variant)
    onnx_path, ir = build.staged / source.path, build.staged / variant.file
    with build.clock(variant.name):
        int8.save_ir(onnx_path, ir)
        feeds = {k: v[: build.options.opt_batch] for k, v in build.reference.feeds[0].items()}
        onnx_s = int8.time_openvino(onnx_path, feeds)
        ir_s = int8.time_openvino(ir, feeds)
        kept = ir_s < 0.95 * onnx_s
        decision: dict[str, Any] = {
            "batch": len(next(iter(feeds.values()))),
            "qdq_onnx_ms": round(onnx_s * 1e3, 3),
            "ir_ms": round(ir_s * 1e3, 3),
            "kept": kept,
        }
        artifact = None
        if kept:  # the same graph on the same runtime: INT8's verdict, if it draws the same
            same = _same_outputs(build, onnx_path, ir)
            decision["quality"] = f"{source.name}'s verdict" if same else "judged anew"
            judged = build.verdicts.get(source.name) if same else None
            artifact = _publish_graph(build, variant, None, {}, judged=judged)
        else:
            ir.unlink()
            ir.with_suffix(".bin").unlink(missing_ok=True)
    source.extra["openvino_ir"] = decision
    return artifact


def _same_outputs(build: Build, a: Path, b: Path) -> bool:
    """Whether OpenVINO draws bit-identical outputs from ``a`` and ``b`` on the tensor gate's
    inputs (each batch size included): then the quality gate's 512-1,000 draws of ``b`` would
    repeat ``a``'s (11 s on a StyleGAN3-T)."""
    with OpenVINORunner(a) as first, OpenVINORunner(b) as second:
        xs = gate.outputs(first, build.reference, build.options.max_batch)
        ys = gate.outputs(second, build.reference, build.options.max_batch)
    return len(xs) == len(ys) and all(np.array_equal(x, y) for x, y in zip(xs, ys, strict=True))


def _engine(build: Build, variant: Variant) -> Artifact:
    """A TensorRT engine built from the ONNX the variant is derived from (INT8: its activation
    quantizers re-expressed as signed INT8, the only Q/DQ TensorRT takes)."""
    source = build.source(variant)
    onnx_file = build.staged / source.path
    if variant.precision is Precision.int8:
        onnx_file = build.staged / f".{source.name}_tensorrt.onnx"
        signed = int8.signed_for_tensorrt(onnx.load(str(build.staged / source.path)))
        onnx_graph.save(signed, onnx_file)
    artifact = make_artifact(build.loaded, variant)
    batches, shapes = (1, build.options.opt_batch, build.options.max_batch), None
    if build.image is not None:  # sides from the smallest to one tile window
        batches, shapes = image_gate.engine_profile(build.image, *batches[1:])
    with build.clock(f"build_{variant.name}"):
        artifact.extra = build_engine(
            onnx_file, build.staged / artifact.path, artifact.inputs, *batches, shapes=shapes
        )
    _gate(build, variant, artifact)
    if onnx_file.name.startswith("."):
        onnx_file.unlink()
        artifact.extra["source_onnx"] = (
            f"{source.path}, activation quantizers re-expressed as signed INT8 "
            "(int8.signed_for_tensorrt)"
        )
    build.versions["tensorrt"] = artifact.extra["tensorrt"]
    return artifact


BUILDERS: dict[str, Builder] = {
    "fp32": _export_fp32,
    "fp16": _convert_fp16,
    "int8": _quantize_int8,
    "int8_ir": _ir_if_faster,
}


# ---- the gates ---------------------------------------------------------------------------------


def _publish_graph(
    build: Build,
    variant: Variant,
    model: onnx.ModelProto | None,
    extra: dict[str, Any],
    judged: Verdict | None = None,
) -> Artifact:
    """Save (``model``; None: already on disk), gate and describe one ONNX or IR artifact.
    ``judged``: the quality gate's verdict on this very model from the run that decided it (FP16
    storage emulated; INT8 on OpenVINO), recorded instead of judging it again."""
    artifact = make_artifact(build.loaded, variant)
    path = build.staged / artifact.path
    if model is not None:
        onnx_graph.save(model, path)
    if variant.derived_from is not None:
        extra = {"derived_from": variant.derived_from, **extra}
    if variant.kind is ArtifactKind.onnx:
        graph = model if model is not None else onnx.load(str(path))
        onnx_graph.refuse_random_ops(graph, artifact.path)
        extra = {**extra, "opset": onnx_graph.opset(graph)}
    artifact.extra = extra
    _gate(build, variant, artifact, judged, model)
    return artifact


def _gate(
    build: Build,
    variant: Variant,
    artifact: Artifact,
    judged: Verdict | None = None,
    model: onnx.ModelProto | None = None,
) -> None:
    """The tensor gate on the artifact's runtime, what that runtime executed, then the gate its
    plan row names; raises the failed check's error (nothing is published)."""
    options = build.options
    runner = _open(variant, build.staged / artifact.path)  # its loading is not the gate's time
    with build.clock(f"validate_{artifact.name}"), runner as r:
        artifact.validation = _tensor_gate(build, variant, r, artifact)
        _record_runtime(r, variant, artifact)
        if options.output is OutputKind.uint8 and variant.head is OutputKind.float:
            build.float_outputs[variant.name] = gate.outputs(r, build.reference, options.max_batch)
        if variant.gate is not Gate.tensor:
            _quality_gate(build, variant, r, artifact, judged, model)
    if variant.precision is Precision.int8 and artifact.path.endswith(".onnx"):
        _gate_on_onnxruntime(build, artifact)


def _gate_on_onnxruntime(build: Build, artifact: Artifact) -> None:
    """An INT8 ONNX file is served on OpenVINO, which its gate ran; the python model falls back
    to ONNX Runtime where OpenVINO does not import, only if this gate passed there too, batch
    invariance in levels included. ORT runs some QDQ graphs differently: NVlabs' StyleGAN2-ADA
    INT8, batch invariant on OpenVINO, differed by 8 levels between batches on ORT, and keeping
    layers in float until ORT agreed left 1 of 39 in INT8 on a StyleGAN3. So a file ORT cannot
    run, or runs differently, is recorded as OpenVINO only (``runners``), not refused."""
    runners = artifact.validation.setdefault("runners", {})
    runners[artifact.validation.get("runner", "openvino")] = "passed"
    named = replace(artifact, name=f"{artifact.name} on ONNX Runtime")
    try:
        runner = OnnxRuntimeRunner(build.staged / artifact.path)
        runner.run({k: v[:1] for k, v in build.reference.feeds[0].items()})
    except Exception as e:  # ORT refuses some QDQ graphs (a MatMulIntegerToFloat zero point)
        why = f"cannot run it ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
    else:
        with build.clock(f"validate_{artifact.name}_onnxruntime"), runner as r:
            try:
                figures = gate.validate(r, named, build.reference, build.options.max_batch)
            except GateError as e:
                why = f"refused by the gate ({e.what})"
            else:
                runners[f"onnxruntime {runner.providers[0]}"] = "passed"
                build.say(
                    f"gate passed {artifact.name} on ONNX Runtime too: PSNR "
                    f"{figures['psnr_db']} dB, batch invariance "
                    f"{figures['batch_invariance_levels']} level(s)"
                )
                return
    runners["onnxruntime"] = f"{why}: OpenVINO only"
    build.say(f"{artifact.name}: ONNX Runtime {why}; served on OpenVINO only")


def _open(variant: Variant, path: Path) -> Runner:
    if variant.runtime is Runtime.openvino:
        return OpenVINORunner(path)
    if variant.runtime is Runtime.tensorrt:
        return TensorRTRunner(path)
    return OnnxRuntimeRunner(path)


def _tensor_gate(
    build: Build, variant: Variant, runner: Runner, artifact: Artifact
) -> dict[str, Any]:
    head_of = PLAN.float_twin(variant).name  # a uint8 head is judged against its float graph too
    float_outputs = build.float_outputs.get(head_of) if variant.head is OutputKind.uint8 else None
    figures = gate.validate(
        runner, artifact, build.reference, build.options.max_batch, float_outputs
    )
    diff = figures.get("max_abs_diff")
    shown = f"max|diff| {diff:.2e}, " if diff is not None else ""
    build.say(
        f"gate passed {artifact.name}: {shown}PSNR {figures['psnr_db']} dB, "
        f"max {figures['max_level_diff']} level(s), batch invariance "
        f"{figures['batch_invariance_max_diff']:.2e}"
    )
    return figures


def _record_runtime(runner: Runner, variant: Variant, artifact: Artifact) -> None:
    """Which engine gated the artifact and, where the engine says, what it executed: an engine
    that ran none of the artifact's layers in its precision refuses it."""
    wanted = variant.precision.value
    if isinstance(runner, OnnxRuntimeRunner):
        provider = runner.providers[0]
        artifact.validation["runner"] = f"onnxruntime {provider}" + (
            " (computes the FP16 graph in FP32: FP16's figures are quality_runner's)"
            if variant.precision is Precision.fp16 and provider == CPU
            else ""
        )
        return
    executed = runner.precision.split("+")
    if isinstance(runner, OpenVINORunner):
        artifact.validation["runner"] = f"openvino CPU ({runner.precision})"
        artifact.extra["executed"] = runner.layer_precisions
        if wanted not in executed:
            raise UnexecutedPrecisionError(
                f"gate failed for {artifact.name!r}: OpenVINO ran every layer in "
                f"{runner.precision}, none in {wanted.upper()}; nothing published"
            )
    elif isinstance(runner, TensorRTRunner):
        artifact.validation["runner"] = f"tensorrt ({runner.precision})"
        artifact.extra["executed"] = runner.layer_precisions
        if runner.layer_precisions and wanted not in executed:
            raise UnexecutedPrecisionError(
                f"gate failed for {artifact.name!r}: TensorRT's engine inspector shows its "
                f"weighted layers in {runner.precision} ({runner.layer_precisions}), none in "
                f"{wanted}; nothing published"
            )


def _quality_gate(
    build: Build,
    variant: Variant,
    runner: Runner,
    artifact: Artifact,
    judged: Verdict | None,
    model: onnx.ModelProto | None,
) -> None:
    """The quality gate on what the artifact draws (a verdict already reached on this very model
    is recorded instead); raises the failed metric's ``QualityError`` (nothing published)."""
    if variant.gate is Gate.quality_fp16_storage:
        artifact.validation["quality_runner"] = FP16_EMULATED
        if judged is None:
            assert model is not None
            judged = _judge_fp16_storage(build, model, variant.precision)
    if judged is None:
        judged = build.quality_gate().judge(
            WithDefaults(runner, build.loaded.interface).run, variant.precision
        )
    artifact.validation["quality"] = judged.to_dict()
    judged.check(artifact.name)
    build.verdicts[artifact.name] = judged
    build.say(f"quality gate passed {artifact.name}: {judged.summary()}")


def _judge_fp16_storage(build: Build, model: onnx.ModelProto, precision: Precision) -> Verdict:
    """The quality gate on an FP16 model with FP16 storage emulated (what an FP16 engine does)."""
    path = build.staged / ".fp16-emulated.onnx"
    onnx_graph.save(fp16_islands.emulate_fp16_storage(model), path)
    try:
        with OnnxRuntimeRunner(path) as runner:
            run = WithDefaults(runner, build.loaded.interface).run
            return build.quality_gate().judge(run, precision)
    finally:
        path.unlink(missing_ok=True)
