"""The gate: every artifact is compared with eager PyTorch before anything is published.

The eager model is checked first: finite, deterministic (the same input twice gives the same image:
a generator drawing random numbers in ``forward`` is refused before export), dependent on z, and
batch invariant. Then, per artifact, in order (the first failure raises its own ``GateError``
subclass, ``errors.py``, with the figures): input/output names,
output shape and dtype, NaN/Inf, values (max abs difference against the tolerance of the artifact's
precision), rendered images (PSNR of uint8 renderings; at most N levels per pixel; a uint8 head
at most ``HEAD_MAX_LEVELS`` from the rendering of its own float graph's output), and batch
invariance (the same z alone and inside a batch of k gives the same image: Triton's dynamic
batching merges requests, so a model that mixes samples would serve wrong images), and dependence
on z (a traced-away latent serves one image for every z).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gendeploy.errors import (
    BatchInvarianceError,
    GateError,
    IgnoresLatentError,
    NameMismatchError,
    NondeterministicModelError,
    NonFiniteError,
    RenderingError,
    ShapeMismatchError,
    ToleranceError,
)
from gendeploy.export.signature import (
    DETERMINISM_ATOL,
    first_differing_layer,
    randomness_message,
    remedy_advice,
)
from gendeploy.manifest import Artifact, Interface, Precision
from gendeploy.runtime.base import Feeds, Runner
from gendeploy.runtime.eager import EagerRunner


@dataclass(frozen=True)
class Tolerance:
    min_psnr_db: float  # uint8 renderings against eager's (the worst seed)
    max_levels: int  # uint8 renderings: largest per-pixel difference, in levels of 255
    # the same z alone and inside a batch, in levels of its rendering (dynamic batching merges
    # requests: what a client sees change); FP32's float outputs are held to ``max_abs`` instead
    batch_levels: int
    # float outputs in [-1, 1], FP32 only: a reduced precision is judged by its pictures (PSNR,
    # levels, and the quality gate on what it draws), never by a raw tensor tolerance
    max_abs: float | None = None


TOLERANCES = {
    # FP32 graphs differ from eager only by operator ordering/fusion: ~1e-6 seen, 1e-4 allowed.
    Precision.fp32: Tolerance(min_psnr_db=60.0, max_levels=1, batch_levels=1, max_abs=1e-4),
    # FP16 keeps 11 significant bits (relative step 2^-11 ~ 4.9e-4): through a few layers with
    # FP32 accumulation a pixel near the top of [-1, 1] moves by a few levels, and a StyleGAN's
    # long chains more: 4-5 levels at 58 dB PSNR, images no one tells apart. A level bound
    # catches what a mean hides: specks (1% of the pixels moved by 31 levels stay at ~44 dB).
    # 8 levels is 3% of the range in the worst pixel; PSNR >= 40 dB keeps the RMS error under 2.6
    # levels. TensorRT may pick other FP16 kernels per batch size: 4 levels between batches.
    Precision.fp16: Tolerance(min_psnr_db=40.0, max_levels=8, batch_levels=4),
    # bf16 keeps 8 significant bits: ~8x FP16's rounding, so 4-8x its bounds.
    Precision.bf16: Tolerance(min_psnr_db=30.0, max_levels=32, batch_levels=32),
    # INT8 rounds every activation and weight to one of 256 levels per tensor (or channel); a
    # pixel in a saturated region can move far more than the mean. These bounds only catch a
    # broken quantization; whether INT8 still draws what FP32 draws is the quality gate's
    # question (per-seed PSNR, Frechet ratio: quality_gate.py). A graph quantized per sample
    # (static scales) gives the same integers at any batch: 1 level for float rounding between
    # batch sizes (a layer whose input scale depends on the batch breaks it: its fallback keeps
    # that layer in float).
    Precision.int8: Tolerance(min_psnr_db=25.0, max_levels=64, batch_levels=1),
}
# A uint8 head only rounds and clips its float graph's output: against that output's rendering it
# may differ by 1 level (a value on a .5 boundary rounded the other way), never more.
HEAD_MAX_LEVELS = 1
FP32_MAX_ABS = 1e-4  # eager itself: the same z at batch 1 and batch k (FP32's tolerance)
PSNR_IDENTICAL = 100.0  # reported when the renderings are identical (JSON has no infinity)
SEEDS = (0, 1)
BATCH = 8  # samples per seed; conditional models use at least one sample per label
# samples compared alone with themselves inside the batch: all of seed 0's (a layer whose scale
# follows the batch moves some samples and not others: StyleGAN3-like INT8 moved the 4th of 8 by 2
# levels and none of the first 3)
INVARIANCE_SAMPLES = BATCH
# truncation values the second seed mixes with the model's default: two usual ones and none (1),
# then both ends of what requests may send (the manifest's truncation_range): every artifact, FP16
# included, must pass there too
OTHER_PSI = (0.5, 0.75, 1.0)


@dataclass
class Reference:
    """Eager PyTorch outputs on the gate's fixed inputs, computed once for all artifacts."""

    feeds: list[Feeds]  # one per seed
    outputs: list[np.ndarray]  # float NCHW
    # the first seed's inputs with the second seed's z: every image must change
    other_z: Feeds = field(default_factory=dict)


def gate_inputs(
    latent_dim: int,
    num_classes: int,
    seeds: tuple[int, ...] = SEEDS,
    interface: Interface | None = None,
) -> list[Feeds]:
    """Fixed inputs per seed. Truncation: the model's default for the first seed, mixed with
    ``OTHER_PSI`` and both ends of ``truncation_range`` for the others; noise inputs: drawn from
    the seed like z."""
    interface = interface or Interface()
    n = max(BATCH, num_classes)
    feeds = []
    for k, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        f: Feeds = {"z": rng.standard_normal((n, latent_dim)).astype(np.float32)}
        if num_classes > 0:
            f["labels"] = (np.arange(n) % num_classes).astype(np.int64)  # every label
        if interface.truncation_arg:
            psi = [interface.truncation_default]
            if k:
                psi += [*OTHER_PSI, *interface.truncation_range]
            f["truncation"] = np.resize(np.array(psi, np.float32), (n, 1))
        for noise in interface.noise:
            f[noise.name] = rng.standard_normal((n, *noise.shape)).astype(np.float32)
        feeds.append(f)
    return feeds


def render(images: np.ndarray) -> np.ndarray:
    """Float NCHW in [-1, 1] -> uint8 NHWC, exactly as the uint8 head does it."""
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_IDENTICAL if mse == 0 else min(PSNR_IDENTICAL, 10 * math.log10(255.0**2 / mse))


def eager_reference(
    module: nn.Module,
    latent_dim: int,
    num_classes: int,
    max_batch: int,
    interface: Interface | None = None,
) -> Reference:
    """Run eager on the fixed inputs and check the model itself: finite, deterministic, dependent
    on z and batch invariant."""
    feeds = gate_inputs(latent_dim, num_classes, interface=interface)
    other = {**feeds[0], "z": feeds[1]["z"]}

    def advice() -> str:  # the options that would fix what failed, tried on the model
        return remedy_advice(module, interface or Interface(), latent_dim, num_classes)

    return reference_on(module, feeds, other, max_batch, advice)


def reference_on(
    module: nn.Module,
    feeds: list[Feeds],
    other: Feeds,
    max_batch: int,
    advice: Callable[[], str] = lambda: "",
) -> Reference:
    """Eager's outputs on ``feeds``, the model checked: finite, deterministic, dependent on its
    input (``other``: the first feeds with another value of the input that must matter) and
    batch invariant; ``advice`` names the options that would fix a failure. Latents:
    ``eager_reference``; images: ``image_gate.image_reference``."""
    runner = EagerRunner(module, eval_mode=False)  # the model as given, not fixed up
    outputs = [_run_chunked(runner, f, max_batch) for f in feeds]
    for f, out in zip(feeds, outputs, strict=True):
        if not np.isfinite(out).all():
            where = _first_nonfinite_layer(module, f)
            raise NonFiniteError(
                f"eager PyTorch output has NaN/Inf ({_count_nonfinite(out)}), first made by "
                f"layer {where}: the model itself is broken, nothing exported"
            )
    again = _run_chunked(runner, feeds[0], max_batch)
    moved = float(np.nan_to_num(np.abs(again - outputs[0]), nan=np.inf).max())
    if moved > DETERMINISM_ATOL:
        first = {k: v[:max_batch] for k, v in feeds[0].items()}
        where = first_differing_layer(
            module, lambda: EagerRunner(module, eval_mode=False).run(first)
        )
        raise NondeterministicModelError(randomness_message(moved, where, advice()))
    if not _depends_on_z(outputs[0], _run_chunked(runner, other, max_batch)):
        what = _ignores_z_message("the generator's output", len(outputs[0]), _varied(other))
        raise IgnoresLatentError(what)
    diff, _ = _batch_invariance(runner, feeds[0], outputs[0])
    if diff > FP32_MAX_ABS:
        raise BatchInvarianceError(_not_invariant_message(module, diff, len(outputs[0]), advice()))
    return Reference(feeds=feeds, outputs=outputs, other_z=other)


def _varied(other: Feeds) -> str:
    """The input the "does it depend on its input" check varies: z, or an image model's."""
    return "z" if "z" in other else next(iter(other))


def outputs(runner: Runner, reference: Reference, max_batch: int) -> list[np.ndarray]:
    """The runner's outputs on the reference's inputs (a float artifact, for its uint8 head)."""
    return [_run_chunked(runner, f, max_batch) for f in reference.feeds]


def validate(
    runner: Runner,
    artifact: Artifact,
    reference: Reference,
    max_batch: int,
    float_outputs: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Gate one artifact; returns its figures or raises the failed check's ``GateError`` with
    them.

    ``float_outputs``: for a uint8 artifact, the outputs of the float graph its head was added
    to (``gate.outputs``); its images must then be within ``HEAD_MAX_LEVELS`` of their rendering.
    """
    tol = TOLERANCES[artifact.precision]
    fail = _Failer(artifact.name, {"tolerance": asdict(tol), "seeds": list(SEEDS)})
    _check_names(runner, artifact, fail)
    _check_images(runner, artifact, reference, max_batch, float_outputs, fail)
    _check_batching(runner, artifact, reference, max_batch, fail)
    fail.figures["passed"] = True
    return fail.figures


def _check_names(runner: Runner, artifact: Artifact, fail: _Failer) -> None:
    """The artifact's inputs, each one of the runner's inputs by any of its names, none other;
    its output the runner's first output by any of its names (an engine may name one tensor
    several ways: OpenVINO merges the names of the tensors it fuses)."""
    want_in, want_out = [t.name for t in artifact.inputs], artifact.output.name
    inputs, outputs = runner.input_aliases(), runner.output_aliases()
    if not inputs and not outputs:
        return  # a runner that does not say (eager): nothing to check
    found = [next((names for names in inputs if name in names), None) for name in want_in]
    matched = len(inputs) == len(want_in) and all(found) and len(set(found)) == len(found)
    if not matched or not outputs or want_out not in outputs[0]:
        shown_in = ["|".join(sorted(names)) for names in inputs]
        shown_out = ["|".join(sorted(names)) for names in outputs]
        fail(
            NameMismatchError,
            f"names: inputs {shown_in} / outputs {shown_out}, expected {want_in} / {[want_out]}",
        )


def _check_images(
    runner: Runner,
    artifact: Artifact,
    reference: Reference,
    max_batch: int,
    float_outputs: list[np.ndarray] | None,
    fail: _Failer,
) -> None:
    """Shape and dtype, NaN/Inf, values, rendered images (and a uint8 head against its float
    graph's rendering), on every seed's inputs."""
    tol, figures = TOLERANCES[artifact.precision], fail.figures
    is_uint8 = artifact.output.dtype == "uint8"
    max_abs = max_levels = head_levels = 0.0
    psnrs = []
    for i, (feeds, ref) in enumerate(zip(reference.feeds, reference.outputs, strict=True)):
        out = _run_chunked(runner, feeds, max_batch)
        n, c, h, w = ref.shape  # eager's: image-to-image models have dynamic sides
        want_shape = (n, h, w, c) if artifact.output.layout == "NHWC" else (n, c, h, w)
        if out.shape != want_shape or out.dtype != np.dtype(artifact.output.dtype):
            got = f"{out.dtype}{list(out.shape)}"
            fail(
                ShapeMismatchError,
                f"shape: got {got}, expected {artifact.output.dtype}{list(want_shape)}",
            )
        if not is_uint8 and not np.isfinite(out).all():
            figures["nonfinite"] = _count_nonfinite(out)
            fail(
                NonFiniteError,
                f"values: {figures['nonfinite']} NaN/Inf values in the output (eager has none)",
            )
        rendered_ref = render(ref)
        rendered = out if is_uint8 else render(out)
        if not is_uint8:
            max_abs = max(max_abs, float(np.abs(out - ref).max()))
        max_levels = max(max_levels, float(np.abs(rendered.astype(np.int16) - rendered_ref).max()))
        psnrs.append(psnr(rendered, rendered_ref))
        if is_uint8 and float_outputs is not None:
            head = np.abs(rendered.astype(np.int16) - render(float_outputs[i])).max()
            head_levels = max(head_levels, float(head))
    figures["samples"] = sum(len(r) for r in reference.outputs)
    if not is_uint8:
        figures["max_abs_diff"] = max_abs
    figures["max_level_diff"] = int(max_levels)
    figures["psnr_db"] = round(min(psnrs), 2)
    if is_uint8 and float_outputs is not None:
        figures["head_level_diff"] = int(head_levels)
    if not is_uint8 and tol.max_abs is not None and max_abs > tol.max_abs:
        fail(ToleranceError, f"values: max abs difference {max_abs:.3g} > {tol.max_abs:g}")
    if figures["psnr_db"] < tol.min_psnr_db:
        fail(RenderingError, f"images: PSNR {figures['psnr_db']} dB < {tol.min_psnr_db} dB")
    if max_levels > tol.max_levels:
        fail(
            RenderingError,
            f"images: a pixel differs by {int(max_levels)} levels > {tol.max_levels}",
        )
    if head_levels > HEAD_MAX_LEVELS:
        fail(
            RenderingError,
            f"uint8 head: a pixel differs by {int(head_levels)} levels from the rendering of its "
            f"float graph's output (> {HEAD_MAX_LEVELS})",
        )


def _check_batching(
    runner: Runner, artifact: Artifact, reference: Reference, max_batch: int, fail: _Failer
) -> None:
    """Some image changes with z, and the same z gives the same image alone and in a batch."""
    tol = TOLERANCES[artifact.precision]
    is_uint8 = artifact.output.dtype == "uint8"
    full = _run_chunked(runner, reference.feeds[0], max_batch)
    if reference.other_z:
        moved = _run_chunked(runner, reference.other_z, max_batch)
        if not _depends_on_z(
            full if is_uint8 else render(full), moved if is_uint8 else render(moved)
        ):
            what = _ignores_z_message("its output", len(full), _varied(reference.other_z))
            raise IgnoresLatentError(f"gate failed for {artifact.name!r}: {what}", what)
    diff, levels = _batch_invariance(runner, reference.feeds[0], full)
    fail.figures["batch_invariance_max_diff"] = diff
    fail.figures["batch_invariance_levels"] = levels
    k = min(len(full), max_batch)
    if not is_uint8 and tol.max_abs is not None:  # FP32's float output: its values
        if diff > tol.max_abs:
            fail(
                BatchInvarianceError,
                f"batch invariance: the same z differs by {diff:.3g} between batch 1 and batch "
                f"{k} (limit {tol.max_abs:g}); dynamic batching would change images",
            )
    elif levels > tol.batch_levels:
        fail(
            BatchInvarianceError,
            f"batch invariance: the same z differs by {levels} levels between batch 1 and "
            f"batch {k} (limit {tol.batch_levels}); dynamic batching would change images",
        )


class _Failer:
    def __init__(self, name: str, figures: dict[str, Any]) -> None:
        self.name, self.figures = name, figures

    def __call__(self, error: type[GateError], what: str) -> None:
        shown = {k: v for k, v in self.figures.items() if k not in ("tolerance", "seeds")}
        raise error(
            f"gate failed for {self.name!r}: {what}; figures {shown}; nothing published", what
        )


def _run_chunked(runner: Runner, feeds: Feeds, max_batch: int) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    parts = [
        runner.run({k: v[i : i + max_batch] for k, v in feeds.items()})
        for i in range(0, n, max_batch)
    ]
    return np.concatenate(parts)


def _batch_invariance(runner: Runner, feeds: Feeds, batched: np.ndarray) -> tuple[float, int]:
    """The largest difference between a sample alone and inside the batch: in values, and in
    levels of their renderings (a uint8 output's values are levels)."""
    worst, levels = 0.0, 0
    for i in range(min(INVARIANCE_SAMPLES, len(batched))):
        single = runner.run({k: v[i : i + 1] for k, v in feeds.items()})
        diff = np.abs(single.astype(np.float64) - batched[i : i + 1].astype(np.float64))
        worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max()))
        if single.dtype != np.uint8:
            single, together = render(np.nan_to_num(single)), render(batched[i : i + 1])
        else:
            together = batched[i : i + 1]
        moved = np.abs(single.astype(np.int16) - together.astype(np.int16)).max()
        levels = max(levels, int(moved))
    return worst, levels


def _depends_on_z(images: np.ndarray, other: np.ndarray) -> bool:
    """Some image changes when z does (compared as rendered uint8, so a change below one level in
    every pixel counts as none)."""
    if images.dtype != np.uint8:
        images, other = render(images), render(other)
    return not np.array_equal(images, other)


def _ignores_z_message(what: str, n: int, name: str = "z") -> str:
    return (
        f"{what} does not depend on {name}: {n} samples with other {name} give the same images "
        "(a traced-away input, a constant image); nothing published"
    )


def _not_invariant_message(module: nn.Module, diff: float, k: int, advice: str = "") -> str:
    batch_stats = [
        name or type(m).__name__
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and (m.training or not m.track_running_stats)
    ]
    cause = (
        f"BatchNorm runs in training mode (batch statistics) in {batch_stats[:4]}: "
        "use running statistics (eval mode, track_running_stats=True)"
        if batch_stats
        else "a layer mixes samples across the batch (batch statistics, cross-sample ops)"
    )
    return (
        f"gate failed: eager PyTorch is not batch invariant (the same z differs by {diff:.3g} "
        f"between batch 1 and batch {k}): {f'export with {advice}' if advice else cause}; "
        "nothing published"
    )


def _first_nonfinite_layer(module: nn.Module, feeds: Feeds) -> str:
    found: list[str] = []

    def hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def fn(_m: nn.Module, _i: object, out: object) -> None:
            if not found and isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
                found.append(name or type(_m).__name__)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n]
    try:
        EagerRunner(module, eval_mode=False).run(feeds)
    finally:
        for h in handles:
            h.remove()
    return repr(found[0]) if found else "(unknown)"


def _count_nonfinite(a: np.ndarray) -> str:
    return f"{int(np.isnan(a).sum())} NaN, {int(np.isinf(a).sum())} Inf"
