"""Feature spaces for the distribution gate's Frechet distance.

- ``DigitsFeatures``: the digits classifier's 64-d penultimate layer (``trainer.quality``), for
  generators trained on digits: it knows what a digit is, so a Frechet distance there measures
  what a reader of digits would see change.
- ``RandomConvFeatures``: for any other generator, an embedded network that needs no download: three
  stride-2 3x3 convolutions with ReLU (32, 64, 64 channels) on the image resized to 32x32, then a
  fixed projection to 64 dimensions. Its weights are drawn from numpy's PCG64 with a fixed seed
  (He scaling), so every machine and every torch version computes the same features.

Why the random network is a fair judge here: the gate compares a generator with *itself* (FP32 vs
a reduced-precision artifact), and divides by FP32's own distance between two seed sets, so only
how the artifact moves the distribution matters, not how meaningful the space is. Random
convolutional features respond to the low-level statistics that precision loss changes (colour,
contrast, edges and texture at 2-8 pixel scales, where the samples are), keep the layout (no
global pooling), and carry no ImageNet semantics that an arbitrary generator's domain may not
share (random embeddings were found reliable for such domains by Naeem et al., 2020). What they
cannot judge is semantics: a change that keeps every low-level statistic but swaps what the image
depicts. That is what a domain classifier (digits) adds where one exists.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from gendeploy.errors import UsageError
from gendeploy.trainer.quality import DigitsClassifier, load_classifier, to_classifier_input

FEATURE_SIZE = 32  # images are resized to this side before the random network
MIN_SIDE = 8  # smaller images carry too little layout for three stride-2 stages


class FeatureSpace(Protocol):
    """Maps float NCHW images in [-1, 1] to feature rows (N, D)."""

    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class RandomConvFeatures:
    """The embedded deterministic feature network (see the module docstring)."""

    name = "random-conv-64 (embedded, seed 0)"
    channels = (32, 64, 64)
    dims = 64

    def __init__(self, image_channels: int, seed: int = 0) -> None:
        if image_channels not in (1, 3):
            raise UsageError(
                f"the distribution gate scores 1- or 3-channel images, this generator makes "
                f"{image_channels} channels: it cannot be scored, so no reduced precision is gated"
            )
        rng = np.random.default_rng(seed)
        self.weights = []
        cin = 3
        for cout in self.channels:
            std = np.sqrt(2.0 / (cin * 9))  # He scaling keeps activations O(1) through the ReLUs
            w = rng.standard_normal((cout, cin, 3, 3)) * std
            self.weights.append(torch.from_numpy(w.astype(np.float32)))
            cin = cout
        side = FEATURE_SIZE // 2 ** len(self.channels)
        flat = cin * side * side
        projection = rng.standard_normal((flat, self.dims)) / np.sqrt(flat)
        self.projection = torch.from_numpy(projection.astype(np.float32))

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        if min(images.shape[-2:]) < MIN_SIDE:
            raise UsageError(
                f"the distribution gate needs images of at least {MIN_SIDE}x{MIN_SIDE}, got "
                f"{images.shape[-2]}x{images.shape[-1]}: this generator cannot be scored"
            )
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != FEATURE_SIZE or x.shape[-2] != FEATURE_SIZE:
            down = x.shape[-1] > FEATURE_SIZE
            x = F.interpolate(x, size=(FEATURE_SIZE,) * 2, mode="bilinear", antialias=down)
        rows = []
        for i in range(0, len(x), 256):
            h = x[i : i + 256]
            for w in self.weights:
                h = F.relu(F.conv2d(h, w, stride=2, padding=1))
            rows.append(h.flatten(1) @ self.projection)
        return torch.cat(rows).numpy().astype(np.float64)


class DigitsFeatures:
    """The digits classifier's feature layer (cached; trained on first use, ~15 s)."""

    name = "digits classifier (64-d feature layer)"

    def __init__(self) -> None:
        classifier = load_classifier()
        assert isinstance(classifier, DigitsClassifier)
        self.classifier = classifier

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = to_classifier_input(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        features = self.classifier.features
        return (
            torch.cat([features(x[i : i + 512]) for i in range(0, len(x), 512)])
            .numpy()
            .astype(np.float64)
        )
