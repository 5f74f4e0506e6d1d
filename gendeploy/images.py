"""Image grids as PNG (Pillow): used for training samples and for images served by Triton."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from gendeploy.fileio import atomic_write


def to_uint8_nhwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float NCHW in [-1, 1] -> uint8 NHWC, with the rounding the exported uint8 head uses;
    uint8 NHWC input is returned as is."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    if array.dtype == np.uint8:
        return array
    if array.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {array.shape}")
    scaled = np.clip(np.rint((array.astype(np.float32) + 1.0) * 127.5), 0, 255)
    return scaled.astype(np.uint8).transpose(0, 2, 3, 1)


def grid(images: np.ndarray | torch.Tensor, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """Tile a batch into one (H, W, C) uint8 image, ``nrow`` images per row."""
    tiles = to_uint8_nhwc(images)
    n, h, w, c = tiles.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        out[y : y + h, x : x + w] = tile
    return out


def save_grid(images: np.ndarray | torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Write a PNG grid atomically; small images are upscaled (nearest) to be seen."""
    from PIL import Image

    tiled = grid(images, nrow)
    picture = Image.fromarray(tiled[..., 0] if tiled.shape[-1] == 1 else tiled)
    scale = max(1, 256 // max(picture.size))
    if scale > 1:
        picture = picture.resize(
            (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
        )
    atomic_write(path, lambda f: picture.save(f, format="PNG"))
    return path
