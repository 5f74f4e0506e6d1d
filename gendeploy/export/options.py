"""What shapes an export besides the model (``ExportOptions``) and where the model comes from
(``ModelSpec``): flags checked up front, the two arguments of ``export()``, the one entry point
the CLI, the bench and ``export_generator`` call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gendeploy.errors import UsageError
from gendeploy.export.int8 import DEFAULT_CALIBRATION_SAMPLES, check_calibration_samples
from gendeploy.export.quality_gate import MIN_SEEDS, QualityConfig
from gendeploy.manifest import OutputKind, Precision, Source, Variant

if TYPE_CHECKING:
    from torch import nn

VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))  # an image model's pixels: BasicSR's, or tanh's


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
    # seeds per set of the quality gate (FP16 and INT8 artifacts); None: quality_gate.seed_count's
    # rule (1,000 where FP32 draws them within a minute, down to 256)
    quality_seeds: int | None = None
    int8_fallback: bool = True  # --int8 that fails the gate: fall back layer by layer (int8.py)
    # a reduced precision refused (by a gate, or failing to build) is recorded in the manifest's
    # ``skipped`` and the precisions that passed are published (the CLI exits 3); True: the
    # export fails with the refusal's error and publishes nothing (FP32 always does)
    strict: bool = False
    # image-to-image models (``image_probe.py``): a tile's core in input pixels (0: 128, rounded up
    # to the size multiple) and the margin read around it (None: the measured receptive field)
    tile: int = 0
    tile_margin: int | None = None

    def __post_init__(self) -> None:
        if self.output not in {k.value for k in OutputKind}:
            raise UsageError(f"output must be float or uint8, got {self.output!r}")
        object.__setattr__(self, "output", OutputKind(self.output))
        if self.calibration_samples is not None and not self.int8:
            raise UsageError("--calibration-samples needs --int8")
        if self.int8:
            check_calibration_samples(
                DEFAULT_CALIBRATION_SAMPLES
                if self.calibration_samples is None
                else self.calibration_samples
            )
        QualityConfig(
            seeds=self.quality_seeds or MIN_SEEDS, max_frechet_ratio=self.max_frechet_ratio
        )
        if not 1 <= self.max_batch <= 4096:
            raise UsageError(f"--max-batch must be in 1..4096, got {self.max_batch}")
        if self.opt_batch == 0:
            object.__setattr__(self, "opt_batch", min(8, self.max_batch))
        if not 1 <= self.opt_batch <= self.max_batch:
            raise UsageError(
                f"--opt-batch must be in 1..--max-batch ({self.max_batch}), got {self.opt_batch}"
            )
        if self.tile < 0 or (self.tile_margin is not None and self.tile_margin < 0):
            raise UsageError(
                f"--tile and --tile-margin must be >= 0, got {self.tile} and {self.tile_margin}"
            )
        if self.require_engine and not (self.fp16 or self.int8):
            raise UsageError(
                "--require-engine needs --fp16 or --int8 (engines are built from the FP16 or the "
                "INT8 ONNX)"
            )

    def wants(self, variant: Variant) -> bool:
        """The options ask for this artifact: its precision (FP32 always, ``fp16``, ``int8``)
        and its head (uint8 with ``output=uint8``)."""
        if variant.head is OutputKind.uint8 and self.output is not OutputKind.uint8:
            return False
        asked = {Precision.fp32: True, Precision.fp16: self.fp16, Precision.int8: self.int8}
        return asked.get(variant.precision, False)

    @property
    def calibration(self) -> int:
        """The calibration sample count in force."""
        return self.calibration_samples or DEFAULT_CALIBRATION_SAMPLES


@dataclass(frozen=True)
class ModelSpec:
    """Where the generator comes from: a checkpoint, ``--model`` with the facts it lacks, or a
    module held in memory with them (``export_generator``).

    Image-to-image: a checkpoint of ``gendeploy train --preset digits-sr4x``, a published
    ``.safetensors`` / ``.pth`` (``archs.load_image_model``), or a ``--model`` / module given
    without ``latent_dim`` and ``image_shape``: its scale and sizes are probed, ``in_channels``
    (default: its first convolution's), ``scale`` (checked against the probe) and ``value_range``
    (its pixels, default its ``value_range`` attribute or [-1, 1]) may be given."""

    checkpoint: Path | None = None
    model: str | None = None
    module: nn.Module | None = None
    weights: Path | None = None
    latent_dim: int | None = None
    num_classes: int | None = None
    image_shape: tuple[int, int, int] | None = None
    forward_kwargs: dict[str, Any] | None = None  # passed to every forward call
    noise: str = "const"  # "seeded": noise buffers become per-request inputs
    random_weights: bool = False  # --model without weights: export its untrained initialisation
    source: Source | None = None  # a module's origin (default: in memory, not rebuildable)
    in_channels: int | None = None  # image-to-image only
    scale: int | None = None
    value_range: tuple[float, float] | None = None

    @property
    def image_to_image(self) -> bool:
        """A ``--model`` or module given without a latent size and an image shape."""
        return self.checkpoint is None and self.latent_dim is None and self.image_shape is None

    def __post_init__(self) -> None:
        self._check_image_facts()
        if self.module is not None:
            if self.checkpoint is not None or self.model is not None:
                raise UsageError("pass a module, a checkpoint or --model, one of them")
            if (self.latent_dim is None) != (self.image_shape is None):
                raise UsageError(
                    "a generator module needs latent_dim and image_shape (C, H, W); an "
                    "image-to-image module neither"
                )
            return
        if self.source is not None:
            raise UsageError("source= describes a module held in memory; pass module= too")
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
        if self.model is not None and not self.image_to_image:
            if self.latent_dim is None or self.image_shape is None:
                raise UsageError(
                    "--model needs --latent-dim and --image-shape C,H,W (a generator), or "
                    "neither (an image-to-image model: its sizes are probed)"
                )
            if self.latent_dim < 1 or (self.num_classes or 0) < 0 or min(self.image_shape) < 1:
                raise UsageError(
                    "--latent-dim and --image-shape must be positive, --num-classes >= 0"
                )
            if self.weights is not None and self.random_weights:
                raise UsageError("--weights and --random-weights contradict each other: pick one")

    def _check_image_facts(self) -> None:
        given = [n for n in ("in_channels", "scale", "value_range") if getattr(self, n) is not None]
        if given and not self.image_to_image:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise UsageError(
                f"{flags}: only for an image-to-image --model (given without --latent-dim and "
                "--image-shape); a checkpoint carries its own"
            )
        if (self.in_channels is not None and self.in_channels < 1) or (
            self.scale is not None and self.scale < 1
        ):
            raise UsageError("--in-channels and --scale must be >= 1")
        if self.value_range is not None and tuple(self.value_range) not in VALUE_RANGES:
            raise UsageError(f"--value-range must be 0,1 or -1,1, got {self.value_range}")
