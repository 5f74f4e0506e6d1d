"""Upscale (or translate) an image of any size with an image-to-image model, a tile at a time.

numpy only and no gendeploy import: the served python model reads this very file (``gendeploy
repo`` copies it beside ``model.py``), the client and the gate import it.

The geometry (``Geometry``): the model's scale, the multiple its sides must be, its smallest side,
and the tile: a core of ``tile`` input pixels read with ``margin`` more on each side, so every
model call sees a window of ``tile + 2 * margin`` pixels a side. ``upscale``:

1. pads the image (reflect) to the size multiple and the smallest side; the output is cropped
   back to ``scale`` times the original size at the end (pad-and-crop);
2. cuts the padded image into cores; each core's window is moved inside the image where it would
   cross an edge (never padded there), so every window has one shape and a core always sees at
   least ``margin`` pixels of real image on each side, or the image's own edge;
3. runs the windows in batches and keeps each one's core (crop and stitch). Where ``margin`` is at
   least the receptive field, the result equals the untiled model's exactly: each kept output
   pixel saw everything it depends on, and an edge where the untiled model sees it. No blending:
   every ramp measured (docs/image-to-image.md) mixed in pixels the margin exists to throw away
   and was worse than crop and stitch at every margin;
4. writes each core into one uint8 output array: memory is the output image plus one batch of
   windows, whatever the input size.

Images here are uint8 HWC (what a file or a request holds); the model takes float NCHW in
[-1, 1] and returns float NCHW in [-1, 1], rendered to uint8 exactly as ``export.gate.render``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

Model = Callable[[np.ndarray], np.ndarray]  # float NCHW in [-1, 1] -> float NCHW in [-1, 1]
Progress = Callable[[int, int], None]  # (windows done, windows in all)


@dataclass(frozen=True)
class Geometry:
    """What a model takes and how it is tiled (all sides in input pixels)."""

    scale: int
    size_multiple: int = 1  # every side a multiple of it
    min_side: int = 1  # the smallest side that runs (a multiple of size_multiple)
    tile: int = 128  # a core's side (a multiple of size_multiple)
    margin: int = 0  # read around each core (a multiple of size_multiple)
    tiled: bool = True  # False: images up to one window run whole, larger ones are refused

    def __post_init__(self) -> None:
        m = self.size_multiple
        if self.scale < 1 or m < 1 or self.min_side < 1 or self.tile < 1 or self.margin < 0:
            raise ValueError(f"invalid geometry {self}")
        if self.tile % m or self.margin % m or self.min_side % m:
            raise ValueError(f"tile, margin and min_side must be multiples of {m}: {self}")

    @property
    def window(self) -> int:
        """The side of every model call when tiling: a core and its margins."""
        return self.tile + 2 * self.margin

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """The size an image is padded to: up to the multiple, at least the smallest side."""
        return self._side(height), self._side(width)

    def _side(self, side: int) -> int:
        m = self.size_multiple
        return max(self.min_side, -(-side // m) * m)

    def refusal(self, height: int, width: int) -> str | None:
        """Why an image of this size cannot be run (None: it can)."""
        if height < 1 or width < 1:
            return f"the image is empty ({height} x {width} pixels)"
        if not self.tiled and max(self.padded(height, width)) > self.window:
            return (
                f"the image is {width} x {height} pixels; this model is not tiled (its tiles "
                f"would differ from the whole image) and runs images up to {self.window} x "
                f"{self.window} pixels whole"
            )
        return None


@dataclass(frozen=True)
class Window:
    """One model call: input rows ``top:top+h`` and columns ``left:left+w`` of the padded image,
    of which the core ``core_top:core_bottom`` x ``core_left:core_right`` is kept."""

    top: int
    left: int
    core_top: int
    core_bottom: int
    core_left: int
    core_right: int


def _axis(side: int, tile: int, margin: int) -> Iterator[tuple[int, int, int]]:
    """(window start, core start, core end) along one axis of ``side`` padded pixels."""
    size = min(tile + 2 * margin, side)
    for core in range(0, side, tile):
        start = min(max(core - margin, 0), side - size)
        yield start, core, min(core + tile, side)


def windows(height: int, width: int, geometry: Geometry) -> tuple[tuple[int, int], list[Window]]:
    """The window shape and the windows that cover a padded ``height`` x ``width`` image."""
    g = geometry
    if not g.tiled:
        return (height, width), [Window(0, 0, 0, height, 0, width)]
    found = [
        Window(top, left, ct, cb, cl, cr)
        for top, ct, cb in _axis(height, g.tile, g.margin)
        for left, cl, cr in _axis(width, g.tile, g.margin)
    ]
    return (min(g.window, height), min(g.window, width)), found


def to_model(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def render(images: np.ndarray) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC (round half to even, clip), as the export gate does."""
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def upscale(
    image: np.ndarray,
    model: Model,
    geometry: Geometry,
    batch: int = 4,
    progress: Progress | None = None,
) -> np.ndarray:
    """``image`` (uint8 HWC) through ``model`` a window at a time: uint8 HWC, ``scale`` x its size.
    ``ValueError`` with one line for an image that cannot run (``Geometry.refusal``)."""
    height, width = image.shape[:2]
    refused = geometry.refusal(height, width)
    if refused:
        raise ValueError(refused)
    ph, pw = geometry.padded(height, width)
    padded = np.pad(image, ((0, ph - height), (0, pw - width), (0, 0)), mode="reflect")
    (wh, ww), cut = windows(ph, pw, geometry)
    s = geometry.scale
    out: np.ndarray | None = None
    for first in range(0, len(cut), batch):
        group = cut[first : first + batch]
        tiles = np.stack([padded[w.top : w.top + wh, w.left : w.left + ww] for w in group])
        rendered = render(model(to_model(tiles)))
        if rendered.shape[1:3] != (wh * s, ww * s):
            raise ValueError(
                f"the model returned {rendered.shape[1]} x {rendered.shape[2]} pixels for a "
                f"{wh} x {ww} window, not {wh * s} x {ww * s} (scale {s})"
            )
        if out is None:  # the model says how many channels it returns
            out = np.empty((ph * s, pw * s, rendered.shape[-1]), np.uint8)
        for w, tile in zip(group, rendered, strict=True):
            rows = slice((w.core_top - w.top) * s, (w.core_bottom - w.top) * s)
            cols = slice((w.core_left - w.left) * s, (w.core_right - w.left) * s)
            out[w.core_top * s : w.core_bottom * s, w.core_left * s : w.core_right * s] = tile[
                rows, cols
            ]
        if progress is not None:
            progress(min(first + batch, len(cut)), len(cut))
    assert out is not None
    return out[: height * s, : width * s]
