"""``export()``: a checkpoint or user generator -> gated ONNX/TensorRT files + ``manifest.json``.

Steps: check flags (before any heavy work), load the eager model, compute eager references on the
gate's fixed inputs, export FP32 ONNX, derive the uint8 / FP16 variants, build TensorRT engines
where possible, gate every artifact, write the manifest, publish atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gendeploy import __version__
from gendeploy.errors import MissingDependencyError, UsageError
from gendeploy.export.int8 import (
    DEFAULT_CALIBRATION_SAMPLES,
    check_calibration_samples,
    require_int8_tools,
)
from gendeploy.export.manifest import (
    MANIFEST_NAME,
    Artifact,
    ArtifactKind,
    BatchProfile,
    Interface,
    Manifest,
    Precision,
    TensorSpec,
    load_manifest,
    sha256_file,
)
from gendeploy.export.publish import check_destination, publish, repair_interrupted, staging_dir
from gendeploy.export.quality_gate import QualityConfig

if TYPE_CHECKING:
    from torch import nn

    from gendeploy.export.source import LoadedModel

Log = Callable[[str], None]
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # also a valid Triton model name


class OutputKind(str, Enum):
    float = "float"  # float32 NCHW in [-1, 1]
    uint8 = "uint8"  # also ship uint8 NHWC variants: post-processing baked into the graph


@dataclass(frozen=True)
class ExportOptions:
    """Everything that shapes an export besides the model itself; part of its fingerprint."""

    fp16: bool = False
    output: OutputKind = OutputKind.float
    max_batch: int = 64
    opt_batch: int = 0  # 0: min(8, max_batch)
    require_engine: bool = False
    int8: bool = False  # NNCF post-training quantization, gated on what it draws (export/int8.py)
    calibration_samples: int | None = None  # --int8: inputs NNCF calibrates on (None: default)
    max_frechet_ratio: float = 1.10  # the quality gate's distribution bound (quality_gate.py)
    quality_seeds: int = 1000  # seeds per set of the quality gate (FP16 and INT8 artifacts)
    int8_fallback: bool = True  # --int8 that fails the gate: fall back layer by layer (int8.py)
    # INT8 the quality gate refuses is recorded in the manifest's ``skipped`` and the export goes
    # on (the bench: the export's decision is reused, not re-run); False: the export fails
    int8_optional: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", OutputKind(self.output))
        if self.calibration_samples is not None and not self.int8:
            raise UsageError("--calibration-samples needs --int8")
        if self.int8:
            check_calibration_samples(
                DEFAULT_CALIBRATION_SAMPLES
                if self.calibration_samples is None
                else self.calibration_samples
            )
        QualityConfig(seeds=self.quality_seeds, max_frechet_ratio=self.max_frechet_ratio)
        if not 1 <= self.max_batch <= 4096:
            raise UsageError(f"--max-batch must be in 1..4096, got {self.max_batch}")
        if self.opt_batch == 0:
            object.__setattr__(self, "opt_batch", min(8, self.max_batch))
        if not 1 <= self.opt_batch <= self.max_batch:
            raise UsageError(
                f"--opt-batch must be in 1..--max-batch ({self.max_batch}), got {self.opt_batch}"
            )
        if self.require_engine and not (self.fp16 or self.int8):
            raise UsageError(
                "--require-engine needs --fp16 or --int8 (engines are built from the FP16 or the "
                "INT8 ONNX)"
            )

    @property
    def calibration(self) -> int:
        """The calibration sample count in force."""
        return self.calibration_samples or DEFAULT_CALIBRATION_SAMPLES


@dataclass(frozen=True)
class ModelSpec:
    """Where the generator comes from: a checkpoint, or ``--model`` with the facts it lacks."""

    checkpoint: Path | None = None
    model: str | None = None
    weights: Path | None = None
    latent_dim: int | None = None
    num_classes: int | None = None
    image_shape: tuple[int, int, int] | None = None
    forward_kwargs: dict[str, Any] | None = None  # passed to every forward call
    noise: str = "const"  # "seeded": noise buffers become per-request inputs
    random_weights: bool = False  # --model without weights: export its untrained initialisation

    def __post_init__(self) -> None:
        given = [
            n
            for n in ("weights", "latent_dim", "num_classes", "image_shape", "forward_kwargs")
            if getattr(self, n) is not None
        ]
        if self.noise != "const":
            given.append("noise")
        if self.random_weights:
            given.append("random_weights")
        if (self.checkpoint is None) == (self.model is None):
            raise UsageError("pass either a CHECKPOINT or --model FILE.py:Class (not both)")
        if self.checkpoint is not None and given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise UsageError(f"{flags}: only with --model; a checkpoint carries its own config")
        if self.model is not None:
            if self.latent_dim is None or self.image_shape is None:
                raise UsageError("--model needs --latent-dim and --image-shape C,H,W")
            if self.latent_dim < 1 or (self.num_classes or 0) < 0 or min(self.image_shape) < 1:
                raise UsageError(
                    "--latent-dim and --image-shape must be positive, --num-classes >= 0"
                )
            if self.weights is not None and self.random_weights:
                raise UsageError("--weights and --random-weights contradict each other: pick one")

    def load(self, log: Log | None = None) -> LoadedModel:
        from gendeploy.export.source import load_checkpoint_model, load_user_model

        if self.checkpoint is not None:
            return load_checkpoint_model(self.checkpoint)
        assert self.model is not None and self.latent_dim is not None and self.image_shape
        return load_user_model(
            self.model,
            self.weights,
            self.latent_dim,
            self.num_classes or 0,
            self.image_shape,
            forward_kwargs=self.forward_kwargs,
            noise=self.noise,
            log=log,
            random_weights=self.random_weights,
        )


def export(
    spec: ModelSpec,
    options: ExportOptions | None = None,
    name: str | None = None,
    out: Path | str | None = None,
    force: bool = False,
    command: str | None = None,
    log: Log | None = None,
) -> Manifest:
    """Export, gate and publish; returns the manifest (the existing one if already up to date).

    A ``--model`` generator is built from its file and weights, then exported by
    ``export_generator`` like a module held in memory.
    """
    options = options or ExportOptions()
    if spec.model is None:
        return export_loaded(
            lambda _say: spec.load(), options, name, out, force=force, command=command, log=log
        )
    from gendeploy.export.inmemory import export_module
    from gendeploy.export.source import build_user_model

    assert spec.latent_dim is not None and spec.image_shape is not None
    if name is not None and not _NAME.match(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '.', '-'")
    module, source, default_name = build_user_model(
        spec.model,
        spec.weights,
        spec.latent_dim,
        spec.num_classes or 0,
        spec.image_shape,
        random_weights=spec.random_weights,
    )
    return export_module(
        module,
        options,
        latent_dim=spec.latent_dim,
        image_shape=spec.image_shape,
        num_classes=spec.num_classes or 0,
        out=out,
        name=name or _safe_name(default_name),
        forward_kwargs=spec.forward_kwargs,
        noise=spec.noise,
        force=force,
        log=log,
        source=source,
        command=command,
    )


def export_loaded(
    load: Callable[[Log], LoadedModel],
    options: ExportOptions,
    name: str | None = None,
    out: Path | str | None = None,
    force: bool = False,
    command: str | None = None,
    log: Log | None = None,
) -> Manifest:
    """Flags checked, then ``load(log)``, export, gate and publish (``export``'s body)."""
    say = log or (lambda _msg: None)
    if name is not None and not _NAME.match(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '.', '-'")
    if options.int8:
        require_int8_tools()
    engine_status = _engine_status(options)

    started = time.perf_counter()
    loaded = load(say)
    name = name or _safe_name(loaded.default_name)
    out_dir = Path(out) if out is not None else Path("exports") / name
    repaired = repair_interrupted(out_dir)
    if repaired:
        say(repaired)
    check_destination(out_dir)
    fingerprint = _fingerprint(loaded, options, name)
    if (out_dir / MANIFEST_NAME).is_file() and not force:
        existing = load_manifest(out_dir)
        if existing.fingerprint == fingerprint:
            say(f"up to date: {out_dir} (same source and options; --force rebuilds it)")
            return existing
        raise UsageError(
            f"{out_dir} holds another export (other source or options); --force replaces it"
        )

    from gendeploy.export.build import build_artifacts

    timings: dict[str, float] = {"load": time.perf_counter() - started}
    with staging_dir(out_dir) as staged:
        artifacts, skipped, versions = build_artifacts(
            loaded, options, staged, engine_status, timings, say
        )
        manifest = Manifest(
            name=name,
            source=loaded.source,
            latent_dim=loaded.latent_dim,
            num_classes=loaded.num_classes,
            image_shape=list(loaded.image_shape),
            batch=BatchProfile(min=1, opt=options.opt_batch, max=options.max_batch),
            opset=artifacts[0].extra.get("opset", 0),
            artifacts=artifacts,
            skipped=skipped,
            versions={**_versions(), **versions},
            command=command if command is not None else shlex.join(sys.argv),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            options=_options_dict(options),
            fingerprint=fingerprint,
            timings={k: round(v, 3) for k, v in timings.items()},
            interface=loaded.interface,
        )
        for artifact in manifest.artifacts:
            artifact.sha256 = sha256_file(staged / artifact.path)
            if artifact.kind is ArtifactKind.openvino:  # the IR's weights file
                artifact.extra["bin_sha256"] = sha256_file(staged / artifact.files()[1])
        manifest.timings["total"] = round(time.perf_counter() - started, 3)
        (staged / MANIFEST_NAME).write_text(manifest.to_json())
        publish(staged, out_dir, force=force)
    say(f"published {out_dir}: {', '.join(a.name for a in manifest.artifacts)}")
    return manifest


def load_eager(manifest: Manifest) -> nn.Module:
    """The eager generator an export was made from (see ``source.load_eager``)."""
    from gendeploy.export.source import load_eager as _load_eager

    return _load_eager(manifest)


def input_specs(latent_dim: int, num_classes: int) -> list[TensorSpec]:
    """A plain ``forward(z[, labels])``'s inputs."""
    return Interface().input_specs(latent_dim, num_classes)


def output_spec(image_shape: tuple[int, int, int], uint8: bool) -> TensorSpec:
    c, h, w = image_shape
    if uint8:
        return TensorSpec("images", "uint8", [-1, h, w, c], layout="NHWC", value_range=[0, 255])
    return TensorSpec("images", "float32", [-1, c, h, w], layout="NCHW", value_range=[-1, 1])


def make_artifact(loaded: LoadedModel, name: str, kind: ArtifactKind, path: str) -> Artifact:
    tokens = name.split("_")  # "int8_uint8" is INT8, "uint8" (the FP32 graph's head) is not
    precision = next((p for p in Precision if p.reduced and p.value in tokens), Precision.fp32)
    return Artifact(
        name=name,
        kind=kind,
        path=path,
        precision=precision,
        inputs=loaded.interface.input_specs(loaded.latent_dim, loaded.num_classes),
        output=output_spec(loaded.image_shape, uint8=name.endswith("uint8")),
    )


def _engine_status(options: ExportOptions) -> str:
    """'' when a TensorRT engine can be built, else why not; fails now under --require-engine."""
    if not (options.fp16 or options.int8):
        return "not requested (needs --fp16 or --int8)"
    from gendeploy.runtime.tensorrt import tensorrt_availability

    status = tensorrt_availability()
    if not status.ok and options.require_engine:
        raise MissingDependencyError(
            f"--require-engine: cannot build a TensorRT engine here ({status.reason})"
        )
    return "" if status.ok else status.reason


def _fingerprint(loaded: LoadedModel, options: ExportOptions, name: str) -> str:
    key = {
        "source": asdict(loaded.source),
        "options": _options_dict(options),
        "name": name,
        "gendeploy": __version__,
    }
    if loaded.interface != Interface():  # absent for plain models: their fingerprints stay
        key["interface"] = asdict(loaded.interface)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _options_dict(options: ExportOptions) -> dict[str, Any]:
    d = asdict(options)
    d["output"] = options.output.value
    if options.int8_fallback:  # the defaults: absent, so fingerprints from before them stay
        del d["int8_fallback"]
    if not options.int8_optional:
        del d["int8_optional"]
    return d


def _safe_name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", raw).lstrip(".-") or "model"
    return name


def _versions() -> dict[str, str]:
    found = {"gendeploy": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "onnxconverter-common", "nncf", "openvino"):
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found
