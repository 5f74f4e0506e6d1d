"""The quality gate: does a reduced-precision generator still draw what FP32 draws?

Tensor tolerances (``gate.py``) say how far outputs moved; they cannot say whether the *samples*
changed: a generator whose INT8 version draws one image for every z can keep a high mean PSNR.
So every reduced-precision artifact (FP16, INT8, bf16) is judged on what it draws, on 256 to 1,000
seeds (``seed_count``), against FP32 on the same seeds:

- **per-seed agreement**: PSNR of the rendered uint8 images, seed by seed; the distribution's min,
  1st percentile and median are reported, and the 1st percentile and median are bounded per
  precision (``PSNR_BOUNDS``); and the worst pixel over every seed, in levels, bounded for the
  floating-point precisions (``LEVEL_BOUNDED``: a speck a PSNR average hides);
- **distribution agreement**: the Frechet distance between the artifact's samples on seed set B
  and FP32's on a disjoint set A, divided by FP32's own distance between B and A (the noise floor
  of drawing two finite sample sets). An artifact identical to FP32 scores exactly 1.0; the gate is
  at most ``max_frechet_ratio`` (1.10). Feature space: ``features.py`` (the digits classifier for
  digits models, else an embedded deterministic network);
- **digits models**: label accuracy and the Frechet ratio to real digits (``trainer.quality``),
  FP32 and artifact, bounded by ``max_label_accuracy_drop`` and ``max_real_frechet_increase``.

API (also for other exporters): ``gate = QualityGate(reference, facts)`` computes FP32's samples
once, ``gate.judge(candidate, precision)`` returns a ``QualityResult`` with every number, and
``result.check(name)`` raises the first failed metric's ``QualityError`` subclass (``errors.py``)
naming every failed metric and its figures.
``reference`` and ``candidate`` are any callables from feeds (``z``, ``labels``) to images (float
NCHW in [-1, 1], or uint8 NHWC): a ``Runner.run``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from gendeploy.errors import (
    DigitsScoreError,
    DistributionError,
    PictureQualityError,
    PrecisionOverflowError,
    QualityError,
    UnscorableError,
    UsageError,
)
from gendeploy.export.features import DigitsFeatures, FeatureSpace, RandomConvFeatures
from gendeploy.export.gate import PSNR_IDENTICAL, TOLERANCES, render
from gendeploy.export.progress import Advance, progress
from gendeploy.manifest import Precision, Source
from gendeploy.runtime.base import Feeds
from gendeploy.seeds import draw_latents
from gendeploy.trainer.models import ModelConfig
from gendeploy.trainer.quality import evaluate_generator, frechet_distance, scorable

ImageFn = Callable[[Feeds], np.ndarray]
MIN_SEEDS = 256  # per set: fewer and the 1st percentile is the worst seed or two
# The seed count when none is asked for (``seed_count``): 1,000 per set where FP32's two sets and
# one set per reduced precision asked for, at FP32's cost per image, fit ``SEED_BUDGET_S``, else
# the largest step that does (never below MIN_SEEDS). A candidate costs at least FP32's time per
# image (FP16 storage emulated about 1.3x, an INT8 fallback several passes): a StyleGAN3-T 16x16 at
# 26 ms per image spent 50 s on its reference at 1,000 seeds (Zen 3).
SEED_STEPS = (1000, 512, MIN_SEEDS)
SEED_BUDGET_S = 60.0
# where the worst pixel is bounded (by gate.TOLERANCES' max_levels): FP16 and bf16 round every
# value alike, so a pixel far off is a defect; INT8 saturates some pixels by design, and its
# PSNR and distribution judge it
LEVEL_BOUNDED = (Precision.fp16, Precision.bf16)
NONFINITE = "values: NaN/Inf in the samples"  # the failure an overflow gives


@dataclass(frozen=True)
class Failure:
    """One failed metric: what it says, and the error a refusal on it raises."""

    error: type[QualityError]
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class PsnrBounds:
    min_p1_db: float  # 99% of seeds at least this close to FP32
    min_median_db: float


# FP16 keeps 11 significant bits: the tensor gate already asks >= 40 dB on its fixed seeds.
# bf16 keeps 8 bits: about 8x FP16's error, 18 dB lower. INT8 rounds every activation to one of
# 256 levels per tensor; on the trained default preset it measured a median of 51 dB, a 1st
# percentile of 45 dB and a minimum of 42 dB (docs/export.md). 30 / 25 dB (an RMS
# error of 8 / 14 levels) leave room for other generators, while a broken quantization (an
# outlier channel setting the scale, a dead channel) lands at 10-22 dB (tests/int8_models.py).
PSNR_BOUNDS = {
    Precision.fp16: PsnrBounds(min_p1_db=40.0, min_median_db=45.0),
    Precision.bf16: PsnrBounds(min_p1_db=25.0, min_median_db=30.0),
    Precision.int8: PsnrBounds(min_p1_db=25.0, min_median_db=30.0),
}


@dataclass(frozen=True)
class QualityConfig:
    seeds: int = SEED_STEPS[0]  # per seed set; FP32 draws two sets, the artifact one
    max_frechet_ratio: float = 1.10
    max_label_accuracy_drop: float = 0.005  # digits: 0.5 points
    max_real_frechet_increase: float = 0.05  # digits: Frechet ratio to real digits, relative
    batch: int = 64  # samples per call (at most the export's max batch)

    def __post_init__(self) -> None:
        if self.seeds < MIN_SEEDS:
            raise UsageError(
                f"--quality-samples must be >= {MIN_SEEDS} (seeds per set of the quality gate; "
                f"default: 1,000 where FP32 draws them within a minute), got {self.seeds}"
            )
        if not (math.isfinite(self.max_frechet_ratio) and self.max_frechet_ratio >= 1.0):
            raise UsageError(
                f"--max-frechet-ratio must be a finite number >= 1.0 (1.0: identical to FP32's "
                f"own noise; default 1.10), got {self.max_frechet_ratio}"
            )
        if self.batch < 1:
            raise UsageError(f"quality gate batch must be >= 1, got {self.batch}")


def seed_count(asked: int | None, seconds_per_image: float, candidates: int = 1) -> tuple[int, str]:
    """Seeds per set, and why: ``asked`` (--quality-samples) when given, else the first of
    ``SEED_STEPS`` whose ``2 + candidates`` sets (FP32's two, one per reduced precision asked
    for) fit ``SEED_BUDGET_S`` at FP32's ``seconds_per_image``."""
    if asked is not None:
        return asked, "asked for (--quality-samples)"
    sets = 2 + candidates
    cost = f"{seconds_per_image * 1e3:.3g} ms per image"
    for seeds in SEED_STEPS:
        if sets * seeds * seconds_per_image <= SEED_BUDGET_S:
            why = f"{sets} sets (FP32's 2, {candidates} to judge) within {SEED_BUDGET_S:g} s"
            return seeds, f"{cost}: {why}"
    return MIN_SEEDS, f"{cost}: the floor ({MIN_SEEDS}); --quality-samples sets it"


@dataclass(frozen=True)
class ModelFacts:
    """What the gate needs to know about the generator."""

    latent_dim: int
    num_classes: int
    image_shape: tuple[int, int, int]
    digits_config: dict[str, Any] | None = None  # a digits model's ModelConfig dict: digits score


def model_facts(
    source: Source, latent_dim: int, num_classes: int, image_shape: list[int] | tuple[int, ...]
) -> ModelFacts:
    """The gate's facts for an export; a checkpoint trained on digits gets the digits score
    (unless the digits classifier cannot score it: then the embedded features judge it alone)."""
    digits = (
        source.kind == "checkpoint"
        and source.dataset == "digits"
        and scorable(ModelConfig.from_dict(source.model_config))
    )
    c, h, w = image_shape
    return ModelFacts(latent_dim, num_classes, (c, h, w), source.model_config if digits else None)


@dataclass(frozen=True)
class PsnrStats:
    min_db: float
    p1_db: float
    median_db: float
    mean_db: float


@dataclass(frozen=True)
class DigitsScore:
    label_accuracy: float | None  # conditional models
    frechet_ratio: float  # to real held-out digits, over the real-train baseline


@dataclass(frozen=True)
class QualityResult:
    precision: str
    seeds: int
    feature_space: str
    psnr: PsnrStats
    frechet: float  # artifact (set B) vs FP32 (set A)
    frechet_floor: float  # FP32 (set B) vs FP32 (set A)
    frechet_ratio: float
    max_frechet_ratio: float
    psnr_bounds: PsnrBounds | None
    digits_fp32: DigitsScore | None = None
    digits: DigitsScore | None = None
    failures: tuple[Failure, ...] = field(default=())
    max_levels: int = 0  # the worst pixel over every seed, in levels of its uint8 rendering
    max_levels_bound: int | None = None  # LEVEL_BOUNDED precisions: gate.TOLERANCES' max_levels

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failure_text(self) -> str:
        return "; ".join(map(str, self.failures))

    def summary(self) -> str:
        text = (
            f"Frechet ratio {self.frechet_ratio:.3f} (max {self.max_frechet_ratio}), per-seed PSNR "
            f"min {self.psnr.min_db} / p1 {self.psnr.p1_db} / median {self.psnr.median_db} dB, "
            f"worst pixel {self.max_levels} level(s) on {self.seeds} seeds"
        )
        if self.digits is not None and self.digits_fp32 is not None:
            text += f"; digits {_digits_text(self.digits)} (FP32 {_digits_text(self.digits_fp32)})"
        return text

    def figures(self) -> dict[str, float]:
        """The headline numbers (the INT8 fallback records them per attempt)."""
        return {"frechet_ratio": self.frechet_ratio, "psnr_p1_db": self.psnr.p1_db}

    def with_failure(self, failure: Failure) -> QualityResult:
        return replace(self, failures=(*self.failures, failure))

    def check(self, name: str) -> None:
        """Raise the first failed metric's error, naming every failed metric and its numbers."""
        if self.failures:
            raise self.failures[0].error(
                f"quality gate failed for {name!r}: {self.failure_text} "
                f"[{self.feature_space} features, {self.seeds} seeds]; nothing published",
                artifact=name,
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [str(f) for f in self.failures]
        d["passed"] = self.passed
        return d


@dataclass(frozen=True)
class TensorRefusal:
    """A candidate the tensor gate refused (batch invariance, NaN/Inf, names, shape) before any
    image was drawn: it fails either way, so the quality gate, ten times the cost, is not run
    (StyleGAN3's INT8 fallback met many candidates that fail on batch invariance)."""

    text: str

    @property
    def passed(self) -> bool:
        return False

    @property
    def failure_text(self) -> str:
        return f"tensor gate: {self.text}"

    def summary(self) -> str:
        return f"{self.failure_text} (quality gate not run)"

    def figures(self) -> dict[str, float]:
        return {}

    def with_failure(self, failure: Failure) -> TensorRefusal:
        return replace(self, text=f"{self.text}; {failure}")

    def check(self, name: str) -> None:
        raise QualityError(
            f"{self.failure_text} for {name!r} (quality gate not run); nothing published",
            artifact=name,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"passed": False, "failures": [self.failure_text], "quality_gate": "not run"}


def _digits_text(score: DigitsScore) -> str:
    acc = f"label accuracy {score.label_accuracy:.2%}, " if score.label_accuracy is not None else ""
    return f"{acc}Frechet ratio to real digits {score.frechet_ratio:.3f}"


def seed_feeds(seeds: np.ndarray, latent_dim: int, num_classes: int) -> Feeds:
    """Inputs for a seed list: z from the documented per-seed RNG (``draw_latents``, the one the
    served models use), label ``seed % num_classes`` (every label equally often)."""
    feeds: Feeds = {"z": draw_latents(seeds, latent_dim)}
    if num_classes > 0:
        feeds["labels"] = (seeds % num_classes).astype(np.int64)
    return feeds


def draw_raw(fn: ImageFn, feeds: Feeds, batch: int, advance: Advance | None = None) -> np.ndarray:
    """``fn``'s output for ``feeds`` as it comes (float NCHW or uint8 NHWC), ``batch`` per call;
    ``advance`` is told the samples each call drew."""
    n = len(feeds["z"])
    parts = []
    for i in range(0, n, batch):
        parts.append(fn({k: v[i : i + batch] for k, v in feeds.items()}))
        if advance is not None:
            advance(len(parts[-1]))
    return np.concatenate(parts)


def draw(fn: ImageFn, feeds: Feeds, batch: int, advance: Advance | None = None) -> np.ndarray:
    """Float NCHW images in [-1, 1] for ``feeds``, ``batch`` samples per call."""
    return as_float_nchw(draw_raw(fn, feeds, batch, advance))


def as_float_nchw(images: np.ndarray) -> np.ndarray:
    """A uint8 NHWC rendering back to float NCHW in [-1, 1]; float images unchanged."""
    if images.dtype == np.uint8:
        return images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    return images.astype(np.float32, copy=False)


def psnr_per_seed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR of each image pair's uint8 renderings (identical pairs: ``PSNR_IDENTICAL``)."""
    ra, rb = render(a).astype(np.float64), render(b).astype(np.float64)
    mse = ((ra - rb) ** 2).reshape(len(ra), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        values = 10 * np.log10(255.0**2 / mse)
    return np.minimum(values, PSNR_IDENTICAL)


def worst_levels(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """The largest per-pixel difference of the uint8 renderings, and the index of its pair."""
    if not len(a):
        return 0, 0
    moved = np.abs(render(a).astype(np.int16) - render(b)).reshape(len(a), -1).max(axis=1)
    worst = int(np.argmax(moved))
    return int(moved[worst]), worst


def feature_space_for(facts: ModelFacts) -> FeatureSpace:
    return DigitsFeatures() if facts.digits_config else RandomConvFeatures(facts.image_shape[0])


@dataclass(frozen=True)
class _Space:
    """FP32's samples in one form (float, or rendered to uint8 levels): set A's features, set B's
    images, and the noise floor between the two sets."""

    features_a: np.ndarray
    images_b: np.ndarray
    floor: float


class QualityGate:
    """FP32's samples on two disjoint seed sets, drawn once; ``judge`` compares a candidate.

    Float candidates are compared with FP32's float images; uint8 candidates (a rendering head)
    with FP32's images rendered the same way, so rounding to 256 levels is not counted as drift.
    """

    def __init__(
        self,
        reference: ImageFn,
        facts: ModelFacts,
        config: QualityConfig | None = None,
        features: FeatureSpace | None = None,
        reference_module: nn.Module | None = None,
    ) -> None:
        self.facts = facts
        self.config = config or QualityConfig()
        self.features = features or feature_space_for(facts)
        n = self.config.seeds
        self.feeds_a = seed_feeds(np.arange(n), facts.latent_dim, facts.num_classes)
        self.feeds_b = seed_feeds(np.arange(n, 2 * n), facts.latent_dim, facts.num_classes)
        with progress("quality reference (FP32)", 2 * n) as advance:
            self.images_a = draw(reference, self.feeds_a, self.config.batch, advance)
            self.images_b = draw(reference, self.feeds_b, self.config.batch, advance)
        for images in (self.images_a, self.images_b):
            if not np.isfinite(images).all():
                raise UnscorableError(
                    "FP32 samples contain NaN/Inf: the generator cannot be scored; export it "
                    "without --int8 / --fp16"
                )
        self._spaces = {False: self._space(self.images_a, self.images_b)}
        self.digits_fp32: DigitsScore | None = None
        if facts.digits_config is not None:
            module = reference_module or _AsModule(reference, self.config.batch)
            self.digits_fp32 = _digits_score(module, facts)

    @property
    def floor(self) -> float:
        """FP32's own Frechet distance between the two seed sets (float images)."""
        return self._spaces[False].floor

    def _space(self, images_a: np.ndarray, images_b: np.ndarray) -> _Space:
        features_a = self.features(images_a)
        floor = frechet_distance(self.features(images_b), features_a)
        scale = float(np.trace(np.cov(features_a, rowvar=False)))
        if not floor > 1e-9 * max(scale, 1e-12):
            raise UnscorableError(
                "the quality gate cannot score this generator: FP32 draws the same samples for "
                "two disjoint seed sets (its output does not depend on z), so there is no noise "
                "floor to compare a reduced precision with; export it without --int8 / --fp16"
            )
        return _Space(features_a, images_b, floor)

    def _space_for(self, rendered: bool) -> _Space:
        if rendered not in self._spaces:
            as_rendered = [as_float_nchw(render(x)) for x in (self.images_a, self.images_b)]
            self._spaces[rendered] = self._space(*as_rendered)
        return self._spaces[rendered]

    def nmse(self, candidate: ImageFn, seeds: int) -> float:
        """The candidate's normalized mean squared error against FP32 on seeds 0 to ``seeds``
        - 1 (set A's first, whatever the seed count; NNCF's ranking measure): a cheap
        sensitivity figure, not a verdict. Set B starts at the seed count, which follows the
        machine's speed: two runs on one machine ranked on different seeds."""
        feeds = {k: v[:seeds] for k, v in self.feeds_a.items()}
        reference = self.images_a[:seeds].astype(np.float64)
        raw = draw(candidate, feeds, self.config.batch)
        images = np.nan_to_num(raw, nan=1e3, posinf=1e3, neginf=-1e3)  # NaN/Inf: ranked last
        return float(((images - reference) ** 2).sum() / max((reference**2).sum(), 1e-12))

    def judge(self, candidate: ImageFn, precision: Precision | str) -> QualityResult:
        precision = Precision(precision)
        with progress(f"quality gate ({precision.value})", self.config.seeds) as advance:
            raw = draw_raw(candidate, self.feeds_b, self.config.batch, advance)
        rendered = raw.dtype == np.uint8
        space = self._space_for(rendered)
        images = as_float_nchw(raw)
        finite = bool(np.isfinite(images).all())
        images = np.nan_to_num(images)
        psnr = psnr_per_seed(images, space.images_b)
        stats = PsnrStats(
            min_db=round(float(psnr.min()), 2),
            p1_db=round(float(np.percentile(psnr, 1)), 2),
            median_db=round(float(np.median(psnr)), 2),
            mean_db=round(float(psnr.mean()), 2),
        )
        frechet = frechet_distance(self.features(images), space.features_a)
        ratio = frechet / space.floor
        failures = [] if finite else [Failure(PrecisionOverflowError, NONFINITE)]
        levels = worst_levels(images, space.images_b)
        level_bound = TOLERANCES[precision].max_levels if precision in LEVEL_BOUNDED else None
        if level_bound is not None and levels[0] > level_bound:
            failures.append(
                Failure(
                    PictureQualityError,
                    f"worst pixel: {levels[0]} levels > {level_bound} (seed "
                    f"{self.config.seeds + levels[1]}; a speck a PSNR average hides)",
                )
            )
        bounds = PSNR_BOUNDS.get(precision)
        if bounds is not None and stats.p1_db < bounds.min_p1_db:
            failures.append(
                Failure(
                    PictureQualityError,
                    f"per-seed PSNR: 1st percentile {stats.p1_db} dB < {bounds.min_p1_db} dB "
                    f"(min {stats.min_db}, median {stats.median_db})",
                )
            )
        if bounds is not None and stats.median_db < bounds.min_median_db:
            failures.append(
                Failure(
                    PictureQualityError,
                    f"per-seed PSNR: median {stats.median_db} dB < {bounds.min_median_db} dB",
                )
            )
        if not ratio <= self.config.max_frechet_ratio:
            failures.append(
                Failure(
                    DistributionError,
                    f"distribution: Frechet ratio {ratio:.3f} > {self.config.max_frechet_ratio} "
                    f"(artifact vs FP32 {frechet:.4g}, FP32's own noise floor {space.floor:.4g})",
                )
            )
        digits = None
        if self.digits_fp32 is not None:
            digits = _digits_score(_AsModule(candidate, self.config.batch), self.facts)
            failures += self._digits_failures(digits, self.digits_fp32)
        return QualityResult(
            precision=precision.value,
            seeds=self.config.seeds,
            feature_space=self.features.name + (" on uint8 renderings" if rendered else ""),
            psnr=stats,
            frechet=round(frechet, 6),
            frechet_floor=round(space.floor, 6),
            frechet_ratio=round(ratio, 4),
            max_frechet_ratio=self.config.max_frechet_ratio,
            psnr_bounds=bounds,
            digits_fp32=self.digits_fp32,
            digits=digits,
            failures=tuple(failures),
            max_levels=levels[0],
            max_levels_bound=level_bound,
        )

    def _digits_failures(self, got: DigitsScore, fp32: DigitsScore) -> list[Failure]:
        failures = []
        if got.label_accuracy is not None and fp32.label_accuracy is not None:
            drop = fp32.label_accuracy - got.label_accuracy
            if drop > self.config.max_label_accuracy_drop:
                failures.append(
                    Failure(
                        DigitsScoreError,
                        f"digits: label accuracy {got.label_accuracy:.2%} vs FP32 "
                        f"{fp32.label_accuracy:.2%} "
                        f"(drop > {self.config.max_label_accuracy_drop:.1%})",
                    )
                )
        limit = fp32.frechet_ratio * (1 + self.config.max_real_frechet_increase)
        if not got.frechet_ratio <= limit:
            failures.append(
                Failure(
                    DigitsScoreError,
                    f"digits: Frechet ratio to real digits {got.frechet_ratio:.3f} vs FP32 "
                    f"{fp32.frechet_ratio:.3f} (> +{self.config.max_real_frechet_increase:.0%})",
                )
            )
        return failures


class Verdict(Protocol):
    """What a quality gate says of one candidate: ``QualityResult`` (generators), or
    ``image_gate.ImageQualityResult`` (image-to-image models)."""

    @property
    def passed(self) -> bool: ...

    @property
    def failure_text(self) -> str: ...

    def summary(self) -> str: ...

    def figures(self) -> dict[str, float]: ...

    def with_failure(self, failure: Failure) -> Verdict: ...

    def check(self, name: str) -> None: ...

    def to_dict(self) -> dict[str, Any]: ...


class Judge(Protocol):
    """A quality gate: ``QualityGate``, or ``image_gate.ImageQualityGate``."""

    def judge(self, candidate: ImageFn, precision: Precision | str) -> Verdict: ...

    def nmse(self, candidate: ImageFn, seeds: int) -> float: ...


def compare(
    reference: ImageFn,
    candidate: ImageFn,
    facts: ModelFacts,
    precision: Precision | str,
    config: QualityConfig | None = None,
) -> QualityResult:
    """One-shot: judge ``candidate`` against ``reference`` (see ``QualityGate`` to judge many)."""
    return QualityGate(reference, facts, config).judge(candidate, precision)


class _AsModule(nn.Module):
    """An image function as a generator module, for the digits score (``evaluate_generator``)."""

    def __init__(self, fn: ImageFn, batch: int) -> None:
        super().__init__()
        self.fn, self.batch = fn, batch

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        feeds: Feeds = {"z": z.numpy().astype(np.float32)}
        if labels is not None:
            feeds["labels"] = labels.numpy().astype(np.int64)
        return torch.from_numpy(draw(self.fn, feeds, self.batch))


def _digits_score(generator: nn.Module, facts: ModelFacts) -> DigitsScore:
    assert facts.digits_config is not None
    report = evaluate_generator(generator, ModelConfig.from_dict(facts.digits_config))
    return DigitsScore(
        label_accuracy=None if report.label_accuracy is None else round(report.label_accuracy, 5),
        frechet_ratio=round(report.frechet_ratio, 4),
    )
