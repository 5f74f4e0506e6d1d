"""A fixed, seeded set of natural-ish test images for image-to-image models (numpy only).

What an upscaler or a translator is judged on must look like what it will be given, and no data
set ships with gendeploy beyond the digits. So each image is drawn from its seed as a photograph
is built up: a smooth colour gradient (sky, walls), a few flat shapes with hard edges (objects),
stroke-like lines of text, and sensor noise; different seeds give different images, the same seed
the same image on every machine (numpy's PCG64 and plain arithmetic, no library resampling).

The export gate runs them at its shapes (``export/image_gate.py``); the bench and the demo use
them as inputs too.
"""

from __future__ import annotations

import numpy as np

NOISE_LEVELS = 4.0  # sensor noise, standard deviation in levels of 255


def synthetic_image(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """One uint8 HWC image of ``height`` x ``width`` from ``seed``."""
    rng = np.random.default_rng([seed, height, width, channels])
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    yn, xn = y / max(height - 1, 1), x / max(width - 1, 1)
    # a gradient between two random colours along a random direction
    angle = rng.uniform(0, np.pi)
    t = (np.cos(angle) * xn + np.sin(angle) * yn + 1) / 2
    lo, hi = rng.uniform(20, 235, size=(2, channels)).astype(np.float32)
    image = lo + t[..., None] * (hi - lo)
    # flat shapes with hard edges: discs and rectangles of random colours
    for _ in range(int(rng.integers(2, 5))):
        colour = rng.uniform(0, 255, size=channels).astype(np.float32)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.1, 0.35) * min(height, width) + 1
        if rng.random() < 0.5:
            inside = (y - cy) ** 2 + (x - cx) ** 2 < r**2
        else:
            inside = (abs(y - cy) < r * rng.uniform(0.3, 1)) & (abs(x - cx) < r)
        image[inside] = colour
    _strokes(image, y, x, rng)
    image += rng.normal(0, NOISE_LEVELS, size=image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _strokes(image: np.ndarray, y: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> None:
    """A line of text-like strokes: short dark or light segments one to two pixels wide."""
    height, width = y.shape
    base = rng.uniform(0.2, 0.8) * height
    size = max(3.0, rng.uniform(0.06, 0.15) * height)
    ink = np.float32(0 if rng.random() < 0.5 else 255)
    left = rng.uniform(0, 0.3) * width
    for k in range(int(rng.integers(4, 12))):
        x0 = left + k * size * 0.8
        x1, y0, y1 = x0 + rng.uniform(-0.4, 0.4) * size, base, base - size
        # distance of every pixel to the segment (x0, y0)-(x1, y1)
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        near = np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)) < rng.uniform(0.5, 1.2)
        image[near] = ink


def synthetic_images(
    n: int, height: int, width: int, channels: int, first_seed: int = 0
) -> np.ndarray:
    """``n`` uint8 NHWC images, seeds ``first_seed`` .. ``first_seed + n - 1``."""
    return np.stack([synthetic_image(height, width, channels, first_seed + i) for i in range(n)])
