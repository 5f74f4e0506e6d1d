"""The shared vocabulary of an export: the plan of its artifacts and ``manifest.json``.

``PLAN`` is the table of every artifact gendeploy can make (precision, kind, head, what it is
derived from, the runtime that runs it, the gate that judges it, the Triton model that serves it).
Export builds it row by row (``export/build.py``), the runner registry, the repository writer and
the bench look artifacts up in it: nothing learns what an artifact is from its name.

``manifest.json`` is the one description of one export, read by every later step (serve, bench):
they read only the manifest (and the files it names) and never re-derive what export recorded.
``schema_version`` is checked on load: 2 added ``image`` (image-to-image exports); a version 1
manifest (none) is read as it was written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from gendeploy.errors import ExportError
from gendeploy.tiling import Geometry

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before ``image``; read with image = None
MANIFEST_NAME = "manifest.json"


class Precision(str, Enum):
    """What an artifact or runner computes in (what ran, not what was asked for)."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"

    @property
    def reduced(self) -> bool:
        """Below FP32: the distribution gate judges what it draws (``quality_gate``)."""
        return self is not Precision.fp32


class ArtifactKind(str, Enum):
    onnx = "onnx"
    tensorrt = "tensorrt"
    openvino = "openvino"  # OpenVINO IR: ``<name>.xml`` (+ ``<name>.bin`` beside it)


SUFFIXES = {
    ArtifactKind.onnx: ".onnx",
    ArtifactKind.openvino: ".xml",
    ArtifactKind.tensorrt: ".plan",
}


# An image output, and the CLI's ``--output`` choice (typer shows and checks it; no torch here).
class OutputKind(str, Enum):
    float = "float"  # float32 NCHW in [-1, 1]
    uint8 = "uint8"  # uint8 NHWC, post-processing baked into the graph (--output uint8: also these)


class Runtime(str, Enum):
    """The engine that runs an artifact: the export gates it there, Triton's python model (and
    the bench's runner for it) runs it there."""

    onnxruntime = "onnxruntime"
    openvino = "openvino"  # executes a QDQ model's quantized layers in INT8 (ORT dequantizes)
    tensorrt = "tensorrt"


class Gate(str, Enum):
    """What judges an artifact before it is published (``export/gate.py``, ``quality_gate.py``)."""

    tensor = "tensor"  # against eager PyTorch on fixed inputs, run on the artifact's runtime
    quality = "quality"  # the tensor gate, then the quality gate on what it draws, same runtime
    # the tensor gate, then the quality gate with FP16 storage emulated on ONNX Runtime's CPU
    # provider: its own run of an FP16 graph computes in FP32 and would show no FP16 rounding
    quality_fp16_storage = "quality_fp16_storage"


class Native(str, Enum):
    """A Triton backend of its own (the NGC container) serving an artifact as ``<export>_<value>``,
    beside the python model."""

    onnx = "onnx"  # platform onnxruntime_onnx
    openvino = "openvino"  # backend openvino
    trt = "trt"  # platform tensorrt_plan


@dataclass(frozen=True)
class Variant:
    """One row of the export plan: an artifact gendeploy can make and what later steps need to
    know about it."""

    name: str  # the artifact's name in the manifest; its file: name + the kind's suffix
    precision: Precision  # what it computes in (a uint8 head rounds in FP32 after it)
    kind: ArtifactKind
    head: OutputKind
    derived_from: str | None  # the artifact it is made from; None: exported from the module
    runtime: Runtime
    gate: Gate
    # the Triton python model that runs it: ``<export><served_in>`` ("" the export's own name);
    # several variants with one suffix are one model's files (ONNX, IR, engine); None: not served
    served_in: str | None
    native: Native | None = None  # also served by that backend (the last such variant present)

    @property
    def file(self) -> str:
        return self.name + SUFFIXES[self.kind]


class Plan:
    """The export plan: variants in build order, each after the one it is derived from."""

    def __init__(self, variants: tuple[Variant, ...]) -> None:
        self.variants = variants
        self._by_name = {v.name: v for v in variants}
        for v in variants:
            if v.derived_from is not None and v.derived_from not in self._by_name:
                raise ValueError(f"{v.name} is derived from {v.derived_from}, not planned before")

    def __iter__(self) -> Iterator[Variant]:
        return iter(self.variants)

    def __getitem__(self, name: str) -> Variant:
        try:
            return self._by_name[name]
        except KeyError:
            raise ExportError(
                f"unknown artifact {name!r}; gendeploy makes {', '.join(self._by_name)}"
            ) from None

    def float_twin(self, variant: Variant) -> Variant:
        """The float graph a uint8 head renders (the variant itself for a float one): same
        precision and kind, float head."""
        return next(
            v
            for v in self.variants
            if (v.precision, v.kind, v.head) == (variant.precision, variant.kind, OutputKind.float)
        )

    def model_suffixes(self) -> tuple[str, ...]:
        """What the Triton models serving an export add to its name (its own python model, the
        FP32 one, adds nothing)."""
        served = [v.served_in for v in self.variants if v.served_in]
        return tuple(dict.fromkeys([*served, *(f"_{n.value}" for n in Native)]))

    def root(self, variant: Variant) -> Variant:
        """The first variant of its precision: the one converted or quantized from FP32."""
        while variant.derived_from is not None:
            source = self[variant.derived_from]
            if source.precision is not variant.precision:
                break
            variant = source
        return variant


_ORT, _OV, _TRT = Runtime.onnxruntime, Runtime.openvino, Runtime.tensorrt
_ONNX, _IR, _PLAN = ArtifactKind.onnx, ArtifactKind.openvino, ArtifactKind.tensorrt
_F, _U8 = OutputKind.float, OutputKind.uint8
_32, _16, _I8 = Precision.fp32, Precision.fp16, Precision.int8
_TENSOR, _QUALITY, _FP16_Q = Gate.tensor, Gate.quality, Gate.quality_fp16_storage
_N_ONNX, _N_OV, _N_TRT = Native.onnx, Native.openvino, Native.trt

# fmt: off
PLAN = Plan((
    #       name              prec kind   head derived from  run   gate     served in     native
    Variant("fp32",           _32, _ONNX, _F,  None,         _ORT, _TENSOR,  "",           _N_ONNX),
    Variant("uint8",          _32, _ONNX, _U8, "fp32",       _ORT, _TENSOR,  "_uint8"),
    Variant("fp16",           _16, _ONNX, _F,  "fp32",       _ORT, _FP16_Q,  None),
    Variant("fp16_uint8",     _16, _ONNX, _U8, "fp16",       _ORT, _FP16_Q,  None),
    Variant("int8",           _I8, _ONNX, _F,  "fp32",       _OV,  _QUALITY, "_int8",      _N_OV),
    Variant("int8_uint8",     _I8, _ONNX, _U8, "int8",       _OV,  _QUALITY, "_int8_uint8"),
    # kept only where OpenVINO runs it measurably faster than int8.onnx (export/build.py)
    Variant("int8_ir",        _I8, _IR,   _F,  "int8",       _OV,  _QUALITY, "_int8",      _N_OV),
    Variant("trt_fp16",       _16, _PLAN, _F,  "fp16",       _TRT, _QUALITY, "",           _N_TRT),
    Variant("trt_fp16_uint8", _16, _PLAN, _U8, "fp16_uint8", _TRT, _QUALITY, "_uint8"),
    Variant("trt_int8",       _I8, _PLAN, _F,  "int8",       _TRT, _QUALITY, "_int8"),
    Variant("trt_int8_uint8", _I8, _PLAN, _U8, "int8_uint8", _TRT, _QUALITY, "_int8_uint8"),
))
# fmt: on


class NoiseMode(str, Enum):
    const = "const"  # noise buffers are constants of the graph (the model as given)
    seeded = "seeded"  # noise buffers become per-sample inputs drawn from the request's seed


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor; ``-1`` marks a dynamic axis: the batch (always axis 0), and height and
    width of an image-to-image model's images."""

    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "uint8"
    shape: list[int]
    layout: str = ""  # "NCHW" / "NHWC" for images
    value_range: list[int] | None = None  # labels: [0, num_classes - 1]; images: [-1, 1]


@dataclass(frozen=True)
class BatchProfile:
    min: int = 1
    opt: int = 8
    max: int = 64


@dataclass
class Artifact:
    """One exported file: an ONNX model or a TensorRT engine, with its gate figures."""

    name: str  # "fp32", "fp16", "uint8", "fp16_uint8", "int8", "int8_uint8", "trt_fp16", ...
    kind: ArtifactKind
    path: str  # relative to the export directory
    precision: Precision
    inputs: list[TensorSpec]
    output: TensorSpec
    sha256: str = ""
    validation: dict[str, Any] = field(default_factory=dict)  # gate figures; "quality": see
    # ``quality_gate.QualityResult.to_dict`` (reduced precisions)
    extra: dict[str, Any] = field(default_factory=dict)  # trt: gpu, compute capability, version;
    # int8: calibration, "float_layers" (layers the fallback kept in floating point)

    @property
    def variant(self) -> Variant:
        """Its row of the export plan."""
        return PLAN[self.name]

    def files(self) -> list[str]:
        """Every file of the artifact, relative to the export directory (an IR has two)."""
        if self.kind is ArtifactKind.openvino:
            return [self.path, str(Path(self.path).with_suffix(".bin"))]
        return [self.path]


@dataclass
class Source:
    """Where the eager model came from, so bench can rebuild it without re-deriving anything."""

    kind: str  # "checkpoint" or "user_model"
    path: str  # checkpoint path, or the user model spec "file.py:Class"
    sha256: str  # checkpoint: of the file; user_model: of its code files, parameters and buffers
    weights: str = ""  # user_model: the weights file ("": the factory's own or random weights)
    model_config: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""  # checkpoint: the dataset it was trained on ("digits" picks the digits score)
    random_weights: bool = False  # user_model: untrained (seeded) initialisation, --random-weights


@dataclass(frozen=True)
class NoiseInput:
    """A noise buffer of the generator served as a per-sample input (``--noise seeded``)."""

    name: str  # the input's name: noise_0, noise_1, ...
    buffer: str  # the buffer it replaces, e.g. "synthesis.b8.conv0.noise_const"
    shape: list[int]  # per-sample shape (no batch axis), e.g. [1, 8, 8]


@dataclass
class Interface:
    """How the served inputs map onto the generator's ``forward`` (``signature.py`` finds it).

    Old manifests without it describe a plain ``forward(z[, labels])``.
    """

    class_input: str = "labels"  # labels as they are; onehot: gendeploy builds c; empty: [N, 0]
    truncation_arg: str = ""  # forward's truncation parameter; "" when not a served input
    truncation_default: float = 1.0  # the model's own default psi
    # how a per-sample psi reaches the model (``signature.Convention``): "" as forward's
    # truncation argument; "nvlabs": G.mapping(z, c), ws moved toward mapping.w_avg (up to
    # truncation_cutoff), G.synthesis(ws); "rosinality": w = G.style(z) moved toward
    # G.mean_latent(4096) (drawn once, torch seed 0), G([w], input_is_latent=True)[0]
    truncation_convention: str = ""
    # [lo, hi]: the psi requests may send, the range the gate (FP16 too) ran the model at; the
    # server refuses psi outside it. [] (manifests before it): not checked
    truncation_range: list[float] = field(default_factory=list)
    noise: list[NoiseInput] = field(default_factory=list)
    forward_kwargs: dict[str, Any] = field(default_factory=dict)  # --forward-kwargs, as parsed

    def input_specs(self, latent_dim: int, num_classes: int) -> list[TensorSpec]:
        """The served inputs, in the order ``signature.ServedGenerator`` takes them."""
        specs = [TensorSpec("z", "float32", [-1, latent_dim])]
        if num_classes > 0:
            specs.append(TensorSpec("labels", "int64", [-1], value_range=[0, num_classes - 1]))
        if self.truncation_arg:
            specs.append(TensorSpec("truncation", "float32", [-1, 1]))
        specs += [TensorSpec(n.name, "float32", [-1, *n.shape]) for n in self.noise]
        return specs

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interface:
        d = dict(d)
        d["noise"] = [NoiseInput(**n) for n in d.get("noise", [])]
        return cls(**d)


INPUT_IMAGES = "input_images"  # an image-to-image artifact's input (its output is "images")


def image_specs(in_channels: int, out_channels: int) -> tuple[TensorSpec, TensorSpec]:
    """An image-to-image artifact's input and output: float NCHW in [-1, 1], N, H, W dynamic."""
    return (
        TensorSpec(INPUT_IMAGES, "float32", [-1, in_channels, -1, -1], "NCHW", [-1, 1]),
        TensorSpec("images", "float32", [-1, out_channels, -1, -1], "NCHW", [-1, 1]),
    )


@dataclass
class TileRecord:
    """How the served model tiles an image (``gendeploy/tiling.py``), and what the export's gate
    measured when it tiled a test image the same way in FP32 eager."""

    size: int  # a core's side, input pixels
    margin: int  # read around each core, input pixels
    tiled: bool  # False: images up to one window run whole, larger ones are refused
    checked_shape: list[int]  # [H, W] of the test image tiled and run whole
    max_level_diff: float  # tiled vs whole, worst pixel in levels of 255
    psnr_db: float  # tiled vs whole, rendered uint8
    why: str = ""  # how the margin was chosen, or why the model is not tiled


@dataclass
class ImageIO:
    """An image-to-image export: ``[N, in_channels, H, W]`` in, ``[N, out_channels, scale*H,
    scale*W]`` out, float in [-1, 1] both ways (``value_range`` is the model's own, mapped to
    [-1, 1] inside the graph), H and W dynamic within what the probe found.

    Every figure here was measured at export (``export/image_probe.py``): the scale and the size
    constraints from output shapes, the receptive field from gradients, the tile by running a
    test image tiled and whole."""

    arch: str
    scale: int
    in_channels: int
    out_channels: int
    size_multiple: int  # every side a multiple of it
    min_side: int  # the smallest side that runs
    value_range: list[float]  # the model's own pixel range: [0, 1] or [-1, 1]
    # input pixels each side an output pixel depends on; None: beyond what the probe measured
    # (``receptive_field_probed`` pixels), the whole image where a norm spans it
    receptive_field: int | None
    receptive_field_probed: int
    tile: TileRecord
    gate_shapes: list[list[int]] = field(default_factory=list)  # [H, W] the gate ran
    loaded_by: str = ""  # "gendeploy.archs", "spandrel", "checkpoint", "--model"
    test_set: str = "synthetic"  # the gate's test images: "synthetic" or "digits"

    def geometry(self) -> Geometry:
        """How ``gendeploy.tiling`` runs it."""
        return Geometry(
            scale=self.scale,
            size_multiple=self.size_multiple,
            min_side=self.min_side,
            tile=self.tile.size,
            margin=self.tile.margin,
            tiled=self.tile.tiled,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageIO:
        return cls(**{**d, "tile": TileRecord(**d["tile"])})


@dataclass
class Manifest:
    name: str
    source: Source
    latent_dim: int
    num_classes: int  # 0: unconditional
    image_shape: list[int]  # [C, H, W]
    batch: BatchProfile
    opset: int
    artifacts: list[Artifact]
    # {"name", "reason"}: not built here; refused ones add "stage" and "error" (``refused``)
    skipped: list[dict[str, str]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    command: str = ""
    created: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # export options: output, fp16...
    fingerprint: str = ""  # sha256 of source + options: an identical re-export is a no-op
    timings: dict[str, float] = field(default_factory=dict)  # seconds per export step
    interface: Interface = field(default_factory=Interface)
    image: ImageIO | None = None  # an image-to-image model (latent_dim and num_classes are 0)
    schema_version: int = SCHEMA_VERSION

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def refused(self) -> list[dict[str, str]]:
        """The reduced precisions asked for and refused (by a gate, or failing to build):
        ``skipped`` entries that name the ``stage`` which refused them and its ``error`` class;
        the others were not buildable here (a TensorRT engine without TensorRT)."""
        return [s for s in self.skipped if "stage" in s]

    def artifact(self, name: str) -> Artifact:
        found = self.find(name)
        if found is not None:
            return found
        raise ExportError(
            f"export {self.name!r} has no artifact {name!r}; it has "
            f"{[a.name for a in self.artifacts]}"
        )

    def find(self, name: str) -> Artifact | None:
        """Artifact ``name``, or None when this export has none."""
        return next((a for a in self.artifacts if a.name == name), None)

    def artifact_path(self, name: str, export_dir: Path | str) -> Path:
        """Absolute path of artifact ``name`` inside ``export_dir``."""
        return Path(export_dir) / self.artifact(name).path

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_enum_value) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        d = dict(d)
        d["source"] = Source(**d["source"])
        d["batch"] = BatchProfile(**d["batch"])
        d["artifacts"] = [_artifact_from_dict(a) for a in d["artifacts"]]
        d["interface"] = Interface.from_dict(d.get("interface") or {})
        d["image"] = ImageIO.from_dict(d["image"]) if d.get("image") else None
        return cls(**d)


def _artifact_from_dict(d: dict[str, Any]) -> Artifact:
    d = dict(d)
    d["kind"] = ArtifactKind(d["kind"])
    d["precision"] = Precision(d["precision"])
    d["inputs"] = [TensorSpec(**t) for t in d["inputs"]]
    d["output"] = TensorSpec(**d["output"])
    return Artifact(**d)


def _enum_value(o: object) -> object:
    if isinstance(o, Enum):
        return o.value
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(export_dir: Path | str) -> Manifest:
    """Read ``<export_dir>/manifest.json`` (or a manifest path); one-line error if unusable."""
    path = Path(export_dir)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"no manifest at {path}; run `gendeploy export` first")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(
            f"{path} is not valid JSON ({e}); re-run `gendeploy export --force`"
        ) from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ExportError(
            f"{path} has manifest schema {version}, this gendeploy reads {readable}; "
            "re-export with this version"
        )
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path} is not a valid gendeploy manifest ({e})") from None
