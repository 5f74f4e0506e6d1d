"""Image grids (Pillow, PNG unless the file name says otherwise): training samples and images
served by Triton."""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from gendeploy.errors import UsageError
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


def image_format(path: Path) -> str:
    """The Pillow format that ``path``'s suffix names (``.png``: PNG, ``.jpg``: JPEG, ...);
    a suffix Pillow cannot write is a ``UsageError``, so nothing is written under a wrong name."""
    from PIL import Image

    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        suffix = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise UsageError(
            f"{path} has {suffix}, which names no image format Pillow can write; "
            "use .png (lossless) or .jpg, .webp, .bmp, .tiff"
        )
    return fmt


def save_grid(images: np.ndarray | torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Write a grid atomically in the format ``path``'s suffix names (``image_format``); small
    images are upscaled (nearest) to be seen."""
    from PIL import Image

    fmt = image_format(path)
    tiled = grid(images, nrow)
    picture = Image.fromarray(tiled[..., 0] if tiled.shape[-1] == 1 else tiled)
    scale = max(1, 256 // max(picture.size))
    if scale > 1:
        picture = picture.resize(
            (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
        )

    def write(f: BinaryIO) -> None:
        try:
            picture.save(f, format=fmt)
        except (OSError, ValueError, KeyError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise  # a disk error (Pillow's "cannot write mode ..." carries no errno)
            raise UsageError(f"{path}: Pillow cannot write these images as {fmt} ({e})") from None

    atomic_write(path, write)
    return path
