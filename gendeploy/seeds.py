"""What a seed means, the same everywhere: the latent z and the noise inputs drawn for it.

Clients, the served python model, the in-process runners and the quality gate all draw from these
functions, so "image 42" is the same image on every path. Self-contained (numpy only): the
repository writer copies everything below ``SERVED`` into the served ``model.py``
(``serve.repo.served_model_source``), which must run where gendeploy is not installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SERVED_MARK = "# served from here on\n"  # what follows is copied into the served model.py
# served from here on

MAX_SEED = 2**63 - 1


def draw_latents(seeds: Any, latent_dim: int) -> np.ndarray:
    """The documented RNG: z for seed s is ``np.random.default_rng(s).standard_normal(latent_dim,
    dtype=np.float32)`` (numpy's PCG64 seeded through SeedSequence), one row per seed."""
    rows = [
        np.random.default_rng(int(s)).standard_normal(latent_dim, dtype=np.float32)
        for s in np.asarray(seeds).reshape(-1)
    ]
    return np.stack(rows) if rows else np.zeros((0, latent_dim), np.float32)


NOISE_STREAM = 1  # noise for seed s comes from the stream [s, 1]; z comes from s alone


def draw_noise(seeds: Any, shapes: list[list[int]]) -> list[np.ndarray]:
    """The documented noise RNG: for seed s, ``np.random.default_rng([s, NOISE_STREAM])
    .standard_normal(total, dtype=np.float32)`` split in order into the per-sample shapes; one
    array [N, *shape] per noise input."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    rows = [
        np.random.default_rng([int(s), NOISE_STREAM]).standard_normal(sum(sizes), dtype=np.float32)
        for s in np.asarray(seeds).reshape(-1)
    ]
    flat = np.stack(rows) if rows else np.zeros((0, sum(sizes)), np.float32)
    bounds = np.cumsum([0, *sizes])
    return [
        flat[:, lo:hi].reshape(-1, *shape)
        for lo, hi, shape in zip(bounds[:-1], bounds[1:], shapes, strict=True)
    ]
