"""What an image-to-image model takes, found by running it: scale, size constraints, receptive
field, and the tile it is served with.

- **Size** (``probe_size``): a model may run at a side it cannot take and return another size
  (a pix2pix U-Net at 33 returns 32, a CycleGAN ResNet at 9 returns 12), so the probe checks
  output shapes, not only that the model ran. The base side is the first of ``BASE_SIDES`` where
  the output is ``scale`` times the input; the size multiple is the smallest power of two whose
  next multiples above the base (and a non-square pair) all come out exact; the smallest side the
  smallest multiple that does.
- **Receptive field** (``measure_reach``): the gradient of one input pixel's output block with
  respect to the input is non-zero exactly where the network can see (on the weights exported:
  any path a weight or activation does not zero). Measured on an image ``2 * probe + 1`` pixels
  wide; a reach that touches the probe's edge is reported as None (a norm over the whole image,
  or a field larger than the probe).
- **Tile** (``choose_tile``): the margin is the measured reach where it is known and at most
  ``MAX_MARGIN``; otherwise margins up to ``MAX_MARGIN`` are tried and the first whose tiled
  output equals the whole image's within the FP32 gate's tolerance is kept; if none does, the
  model is not tiled (a norm over the whole image: CycleGAN's instance norm) and images up to one
  window run whole.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gendeploy.errors import UsageError
from gendeploy.export.gate import TOLERANCES, psnr
from gendeploy.export.loaded import ImageFacts
from gendeploy.manifest import Precision, TileRecord
from gendeploy.tiling import Geometry, upscale

BASE_SIDES = (8, 16, 32, 64, 128, 256, 512)
REACH_PROBE = 64  # input pixels each side the receptive-field probe can measure
MAX_MARGIN = 64  # input pixels: a larger margin would make each window mostly overlap
DEFAULT_TILE = 128  # input pixels of a tile's core (rounded up to the size multiple)


Run = Callable[[int, int], "tuple[int, ...] | None"]  # (h, w) -> output shape, None: it failed


def _runner(module: nn.Module, channels: int) -> Run:
    def run(h: int, w: int) -> tuple[int, ...] | None:
        x = torch.zeros(1, channels, h, w)
        try:
            with torch.inference_mode():
                return tuple(module(x).shape)
        except Exception:  # a side the model cannot take: its own error, whatever it is
            return None

    return run


def in_channels_of(module: nn.Module) -> int | None:
    """The first convolution's input channels, the usual first layer of an image model."""
    first = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else None


def probe_size(module: nn.Module, channels: int, label: str) -> tuple[int, int, int, int]:
    """(scale, output channels, size multiple, smallest side); one-line ``UsageError`` for a
    model that is not image to image."""
    run = _runner(module.eval(), channels)
    base = scale = out_channels = 0
    for side in BASE_SIDES:
        shape = run(side, side)
        if shape is not None and len(shape) == 4 and shape[2] == shape[3] and shape[2] % side == 0:
            base, scale, out_channels = side, shape[2] // side, shape[1]
            break
    if not base:
        raise UsageError(
            f"{label} does not return a (N, C, s*H, s*W) image for a ({channels}, H, H) input at "
            f"any side of {', '.join(map(str, BASE_SIDES))}: not an image-to-image model, or "
            "another input channel count (--in-channels)"
        )

    def exact(h: int, w: int) -> bool:
        return run(h, w) == (1, out_channels, scale * h, scale * w)

    multiple = next(
        (
            m
            for m in (2**k for k in range(10))
            if m <= base
            and all(exact(base + k * m, base) for k in (1, 2, 3))
            and exact(base, base + m)
        ),
        base,
    )
    sides = (k * multiple for k in range(1, base // multiple + 1))
    min_side = next((side for side in sides if exact(side, side)), base)
    return scale, out_channels, multiple, min_side


def measure_reach(module: nn.Module, channels: int, scale: int, multiple: int) -> int | None:
    """Input pixels each side the output of one pixel depends on; None where it reaches the
    probe's edge (``REACH_PROBE``)."""
    side = -(-(2 * REACH_PROBE + 1) // multiple) * multiple
    centre = side // 2
    x = torch.rand(1, channels, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x.requires_grad_(True)
    with torch.enable_grad():
        out = module.eval()(x)
        block = out[
            ..., centre * scale : (centre + 1) * scale, centre * scale : (centre + 1) * scale
        ]
        weights = torch.rand(block.shape, generator=torch.Generator().manual_seed(1)) + 0.5
        (block * weights).sum().backward()
    assert x.grad is not None
    seen = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = np.flatnonzero(seen.any(dim=1).numpy()), np.flatnonzero(seen.any(dim=0).numpy())
    reach = int(
        max(centre - rows.min(), rows.max() - centre, centre - cols.min(), cols.max() - centre)
    )
    return None if reach >= centre - 1 else reach


def tile_side(requested: int, multiple: int, min_side: int) -> int:
    """A core side: ``requested`` (0: ``DEFAULT_TILE``) rounded up to the multiple and at least
    the smallest side."""
    side = requested or DEFAULT_TILE
    return max(min_side, -(-side // multiple) * multiple)


def choose_tile(
    module: nn.Module,
    facts: ImageFacts,
    image: np.ndarray,
    tile: int,
    margin: int | None,
) -> TileRecord:
    """The tile and margin the model is served with, checked on ``image`` (uint8 HWC, larger than
    one window) tiled against whole; ``margin`` given: that one, else chosen as the module doc
    says."""
    m = facts.size_multiple
    up = lambda v: -(-v // m) * m  # noqa: E731
    core = tile_side(tile, m, facts.min_side)
    whole = _whole(module, image, facts)
    if margin is not None:
        candidates, why = [up(margin)], f"margin {up(margin)} given (--tile-margin)"
    elif facts.receptive_field is not None and facts.receptive_field <= MAX_MARGIN:
        candidates = [up(facts.receptive_field)]
        why = f"the measured receptive field ({facts.receptive_field} px) fits in the margin"
    else:
        candidates = sorted({up(v) for v in (16, 32, MAX_MARGIN)})
        why = (
            f"the receptive field is beyond the {REACH_PROBE} px probed: the first margin whose "
            "tiled output equals the whole image's"
        )
    record = None
    for candidate in candidates:
        record = _tiled_against_whole(module, facts, image, whole, core, candidate, why)
        if _within_fp32_gate(record):
            return record
    assert record is not None
    if margin is not None:
        return record  # asked for: served tiled, the error recorded
    record.tiled = False
    record.why = (
        f"not tiled: at margin {record.margin} a tiled {image.shape[1]} x {image.shape[0]} image "
        f"differs from the whole by {record.max_level_diff:g} levels (PSNR {record.psnr_db} dB); "
        f"images up to {core + 2 * record.margin} px a side run whole"
    )
    return record


def _within_fp32_gate(record: TileRecord) -> bool:
    tol = TOLERANCES[Precision.fp32]
    return record.max_level_diff <= tol.max_levels and record.psnr_db >= tol.min_psnr_db


def _model(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(module(torch.from_numpy(x)).numpy())

    return run


def _whole(module: nn.Module, image: np.ndarray, facts: ImageFacts) -> np.ndarray:
    """The image in one model call (padded to the multiple, as the tiles are)."""
    m = facts.size_multiple
    side = max(facts.min_side, -(-max(image.shape[:2]) // m) * m)
    whole = Geometry(facts.scale, facts.size_multiple, facts.min_side, tile=side, tiled=False)
    return upscale(image, _model(module), whole)


def _tiled_against_whole(
    module: nn.Module,
    facts: ImageFacts,
    image: np.ndarray,
    whole: np.ndarray,
    core: int,
    margin: int,
    why: str,
) -> TileRecord:
    geometry = Geometry(facts.scale, facts.size_multiple, facts.min_side, core, margin)
    tiled = upscale(image, _model(module), geometry)
    levels = float(np.abs(tiled.astype(np.int16) - whole).max())
    return TileRecord(
        size=core,
        margin=margin,
        tiled=True,
        checked_shape=[int(image.shape[0]), int(image.shape[1])],
        max_level_diff=levels,
        psnr_db=round(psnr(tiled, whole), 2),
        why=why,
    )


def gate_shapes(facts: ImageFacts, tile: TileRecord) -> list[tuple[int, int]]:
    """[H, W] the gate runs every artifact at: square, non-square, odd (where the multiple is 1)
    and the largest a model call gets (one window)."""
    m = facts.size_multiple
    up = lambda v: max(facts.min_side, -(-v // m) * m)  # noqa: E731
    square = up(24)
    shapes = [(square, square), (square, up(square * 3 // 2 + 1))]
    if m == 1:
        shapes.append((square + 1, square + 7))
    window = tile.size + 2 * tile.margin
    shapes.append((window, window))
    return list(dict.fromkeys(shapes))
