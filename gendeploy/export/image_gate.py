"""The gate for image-to-image models: fixed test images at several shapes, eager's outputs on
them, and the quality gate for reduced precisions.

- **Test images** (``test_feeds``): a fixed, seeded set at every shape of ``image_probe.
  gate_shapes`` (square, non-square, odd where the size multiple allows it, and one window, the
  largest a model call gets): held-out digit scans defocused as the trainer defocuses them for a
  digits model, else ``gendeploy.testimages``' synthetic photographs. ``IMAGES_PER_SHAPE`` each
  (``LARGEST_IMAGES`` at the window), as uint8 rendered to [-1, 1] floats, what a served request
  becomes.
- **The tensor gate** is ``gate.validate`` on these inputs (names, shapes, NaN/Inf, values, PSNR
  of the rendering, batch invariance, dependence on the input), with ``gate.TOLERANCES``.
- **Reduced precision** (``ImageQualityGate``): what FP16 and INT8 images look like against FP32
  (eager) on the same test images: every image's PSNR of the uint8 rendering, and the worst pixel
  over all of them, bounded per precision (``IMAGE_BOUNDS``). No Frechet distance: the inputs
  are images, so each output has its FP32 counterpart to be compared with directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from gendeploy.errors import PictureQualityError, PrecisionOverflowError, QualityError
from gendeploy.export import gate
from gendeploy.export.image_probe import (
    MAX_MARGIN,
    REACH_PROBE,
    choose_tile,
    gate_shapes,
    tile_side,
)
from gendeploy.export.loaded import ImageFacts, LoadedModel
from gendeploy.export.quality_gate import Failure, ImageFn, PsnrStats, psnr_per_seed
from gendeploy.export.tensorrt_build import Shapes
from gendeploy.manifest import INPUT_IMAGES, ImageIO, Precision
from gendeploy.runtime.base import Feeds
from gendeploy.testimages import synthetic_images
from gendeploy.tiling import to_model

IMAGES_PER_SHAPE = 4
LARGEST_IMAGES = 2  # at one window: the gate's largest shape
OTHER_SEED = 1000  # the images the "does it depend on its input" check swaps in
DIGIT = 8  # the digits data set's side
TILE_CHECK_SEED = 2000  # the image tiled and run whole to choose and check the tile


@dataclass(frozen=True)
class ImageBounds:
    """What a reduced-precision image must keep of FP32's (both on uint8 renderings)."""

    min_psnr_db: float  # every test image
    max_levels: int  # the worst pixel of all test images, in levels of 255


# FP16 keeps 11 significant bits: the tensor gate's own FP16 bounds (40 dB, 4 levels on a pixel
# of one batch), with room for a larger worst pixel over many more pixels (a window of an x4
# upscaler is 600x600 of them). INT8 rounds every activation to 256 levels per tensor: 30 dB is an
# RMS error of 8 levels, and a saturated pixel may move further; a broken quantization lands far
# below (tests/test_export_image.py measures the proof models; docs/image-to-image.md has them).
IMAGE_BOUNDS = {
    Precision.fp16: ImageBounds(min_psnr_db=40.0, max_levels=16),
    Precision.bf16: ImageBounds(min_psnr_db=30.0, max_levels=48),
    Precision.int8: ImageBounds(min_psnr_db=30.0, max_levels=64),
}


def test_images(facts: ImageFacts, height: int, width: int, n: int, seed: int) -> np.ndarray:
    """``n`` uint8 NHWC test images of ``height`` x ``width``, the model's input channels."""
    if facts.test_set == "digits":
        return digits_mosaics(height, width, facts.in_channels, n, seed, facts.input_blur)
    return synthetic_images(n, height, width, facts.in_channels, seed)


def digits_mosaics(
    height: int, width: int, channels: int, n: int, seed: int, blur: float
) -> np.ndarray:
    """Held-out digit scans (8x8), defocused by ``blur`` as the trainer's pairs are, in a grid
    cropped to ``height`` x ``width``, in a seeded order: uint8 NHWC."""
    import torch

    from gendeploy.trainer.data import digits_split, gaussian_blur

    scans, _ = digits_split("test")
    rows, cols = -(-height // DIGIT), -(-width // DIGIT)
    rng = np.random.default_rng([seed, height, width])
    picked = scans[rng.integers(0, len(scans), size=(n, rows, cols))]  # (n, rows, cols, 8, 8)
    low = torch.from_numpy(picked.reshape(-1, 1, DIGIT, DIGIT) * 2 - 1)
    blurred = gaussian_blur(low, blur).numpy().reshape(n, rows, cols, DIGIT, DIGIT)
    grid = blurred.transpose(0, 1, 3, 2, 4).reshape(n, rows * DIGIT, cols * DIGIT)
    levels = np.clip(np.round((grid[:, :height, :width] + 1) * 127.5), 0, 255).astype(np.uint8)
    return np.repeat(levels[..., None], channels, axis=-1)


def test_feeds(facts: ImageFacts, shapes: list[tuple[int, int]], seed: int = 0) -> list[Feeds]:
    """The gate's inputs: one feed per shape, float NCHW in [-1, 1]."""
    feeds = []
    for i, (h, w) in enumerate(shapes):
        n = LARGEST_IMAGES if i == len(shapes) - 1 else IMAGES_PER_SHAPE
        feeds.append({INPUT_IMAGES: to_model(test_images(facts, h, w, n, seed + 100 * i))})
    return feeds


def image_reference(
    module: nn.Module, facts: ImageFacts, shapes: list[tuple[int, int]], max_batch: int
) -> gate.Reference:
    """Eager's outputs on the test images, the model checked as ``gate.reference_on`` does."""
    feeds = test_feeds(facts, shapes)
    h, w = shapes[0]
    other = {INPUT_IMAGES: to_model(test_images(facts, h, w, IMAGES_PER_SHAPE, OTHER_SEED))}
    return gate.reference_on(module, feeds, other, max_batch)


@dataclass(frozen=True)
class ImageQualityResult:
    """A reduced-precision artifact's images against FP32's on the gate's test images."""

    precision: str
    images: int
    shapes: list[list[int]]
    psnr: PsnrStats  # per image
    max_level_diff: int  # the worst pixel of all images
    bounds: ImageBounds | None
    failures: tuple[Failure, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failure_text(self) -> str:
        return "; ".join(map(str, self.failures))

    def summary(self) -> str:
        return (
            f"per-image PSNR to FP32 min {self.psnr.min_db} / median {self.psnr.median_db} dB, "
            f"worst pixel {self.max_level_diff} levels on {self.images} test images"
        )

    def figures(self) -> dict[str, float]:
        """The headline numbers (the INT8 fallback records them per attempt)."""
        return {"psnr_min_db": self.psnr.min_db, "max_level_diff": self.max_level_diff}

    def with_failure(self, failure: Failure) -> ImageQualityResult:
        return ImageQualityResult(**{**self.__dict__, "failures": (*self.failures, failure)})

    def check(self, name: str) -> None:
        """Raise the first failed check's error, naming every failure."""
        if self.failures:
            raise self.failures[0].error(
                f"quality gate failed for {name!r}: {self.failure_text} [{self.images} test "
                "images against FP32]; nothing published",
                artifact=name,
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [str(f) for f in self.failures]
        d["passed"] = self.passed
        return d


class ImageQualityGate:
    """Judges a candidate's images against FP32's (eager's, from the tensor gate's reference)."""

    def __init__(self, reference: gate.Reference, batch: int) -> None:
        self.reference, self.batch = reference, batch

    def _draw(self, candidate: ImageFn, feeds: Feeds) -> np.ndarray:
        n = len(feeds[INPUT_IMAGES])
        parts = [
            candidate({k: v[i : i + self.batch] for k, v in feeds.items()})
            for i in range(0, n, self.batch)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def nmse(self, candidate: ImageFn, images: int) -> float:
        """Normalized MSE against FP32 on the first shape's images (the INT8 fallback's ranking
        measure): a cheap sensitivity figure, not a verdict."""
        feeds = self.reference.feeds[0]
        reference = self.reference.outputs[0].astype(np.float64)[:images]
        got = self._draw(candidate, {k: v[:images] for k, v in feeds.items()})
        got = np.nan_to_num(got, nan=1e3, posinf=1e3, neginf=-1e3)  # NaN/Inf: ranked last
        return float(((got - reference) ** 2).sum() / max((reference**2).sum(), 1e-12))

    def judge(self, candidate: ImageFn, precision: Precision | str) -> ImageQualityResult:
        precision = Precision(precision)
        psnrs, worst, finite = [], 0, True
        for feeds, fp32 in zip(self.reference.feeds, self.reference.outputs, strict=True):
            got = self._draw(candidate, feeds)
            finite = finite and bool(np.isfinite(got).all())
            got = np.nan_to_num(got)
            psnrs.append(psnr_per_seed(got, fp32))
            diff = np.abs(gate.render(got).astype(np.int16) - gate.render(fp32))
            worst = max(worst, int(diff.max()))
        values = np.concatenate(psnrs)
        stats = PsnrStats(
            min_db=round(float(values.min()), 2),
            p1_db=round(float(np.percentile(values, 1)), 2),
            median_db=round(float(np.median(values)), 2),
            mean_db=round(float(values.mean()), 2),
        )
        bounds = IMAGE_BOUNDS.get(precision)
        return ImageQualityResult(
            precision=precision.value,
            images=len(values),
            shapes=[list(o.shape[2:]) for o in self.reference.outputs],
            psnr=stats,
            max_level_diff=worst,
            bounds=bounds,
            failures=tuple(_failures(stats, worst, finite, bounds)),
        )


def _failures(
    stats: PsnrStats, worst: int, finite: bool, bounds: ImageBounds | None
) -> list[Failure]:
    found = [] if finite else [Failure(PrecisionOverflowError, "values: NaN/Inf in the images")]
    if bounds is None:
        return found
    error: type[QualityError] = PictureQualityError
    if stats.min_db < bounds.min_psnr_db:
        found.append(
            Failure(
                error,
                f"per-image PSNR: min {stats.min_db} dB < {bounds.min_psnr_db} dB "
                f"(median {stats.median_db})",
            )
        )
    if worst > bounds.max_levels:
        found.append(Failure(error, f"worst pixel: {worst} levels from FP32 > {bounds.max_levels}"))
    return found


CALIBRATION_SEED = 20_240_611  # as int8.CALIBRATION_SEED: a stream apart from the gate's images
CALIBRATION_IMAGES = 64  # the default for image models (NNCF runs the graph on every one)
CALIBRATION_SIDE = 64  # rounded up to the size multiple


def calibration_feeds(facts: ImageFacts, samples: int, batch: int) -> list[Feeds]:
    """``samples`` test images of ``CALIBRATION_SIDE`` pixels a side (another seed than the
    gate's), ``batch`` per item: what NNCF measures activation ranges on."""
    m = facts.size_multiple
    side = max(facts.min_side, -(-CALIBRATION_SIDE // m) * m)
    images = to_model(test_images(facts, side, side, samples, CALIBRATION_SEED))
    return [{INPUT_IMAGES: images[i : i + batch]} for i in range(0, samples, batch)]


def prepare(
    loaded: LoadedModel, tile: int, margin: int | None, max_batch: int, reduced: bool
) -> tuple[gate.Reference, ImageQualityGate | None, ImageIO]:
    """Everything an image model's build compares with: the tile (checked tiled against whole,
    ``image_probe.choose_tile``), the gate's shapes, eager's outputs on the test images, and the
    quality gate where a reduced precision is asked for."""
    facts = loaded.image
    assert facts is not None
    core = tile_side(tile, facts.size_multiple, facts.min_side)
    # larger than a window with every margin tried, and at least three cores a side: a middle
    # core read with full margins, the last one short
    widest = max(margin or 0, MAX_MARGIN)
    side = max(2 * core + widest, core + 2 * widest) + core // 2 + 3
    check = test_images(facts, side, side + 4, 1, TILE_CHECK_SEED)[0]
    record = choose_tile(loaded.module, facts, check, core, margin)
    shapes = gate_shapes(facts, record)
    reference = image_reference(loaded.module, facts, shapes, max_batch)
    quality = ImageQualityGate(reference, min(IMAGES_PER_SHAPE, max_batch)) if reduced else None
    image = ImageIO(
        arch=facts.arch,
        scale=facts.scale,
        in_channels=facts.in_channels,
        out_channels=facts.out_channels,
        size_multiple=facts.size_multiple,
        min_side=facts.min_side,
        value_range=list(facts.value_range),
        receptive_field=facts.receptive_field,
        receptive_field_probed=REACH_PROBE,
        tile=record,
        gate_shapes=[list(s) for s in shapes],
        loaded_by=facts.loaded_by,
        test_set=facts.test_set,
    )
    return reference, quality, image


ENGINE_MAX_BATCH = 8  # windows per engine call: the served model batches at most this many


def engine_profile(
    image: ImageIO, opt_batch: int, max_batch: int
) -> tuple[tuple[int, int, int], dict[str, Shapes]]:
    """A TensorRT engine's (min, opt, max) batch and input shapes: sides from the smallest that
    runs to one tile window (every call of the tiled served model, and the gate's largest shape),
    tuned for full windows; at most ``ENGINE_MAX_BATCH`` windows a call (an x4 window is 600 x
    600 output pixels)."""
    high = min(max_batch, ENGINE_MAX_BATCH)
    opt = min(opt_batch, high)
    c, low, window = image.in_channels, image.min_side, image.tile.size + 2 * image.tile.margin
    shapes: Shapes = ((1, c, low, low), (opt, c, window, window), (high, c, window, window))
    return (1, opt, high), {INPUT_IMAGES: shapes}
