"""Feature spaces for the distribution gate's Frechet distance.

- ``DigitsFeatures``: the digits classifier's 64-d penultimate layer (``trainer.quality``), for
  generators trained on digits: it knows what a digit is, so a Frechet distance there measures
  what a reader of digits would see change.
- ``RandomConvFeatures``: for any other generator, an embedded network that needs no download: three
  stride-2 3x3 convolutions with ReLU (32, 64, 64 channels) on the image resized to 32x32, then a
  fixed projection to 64 dimensions. Its weights are drawn from numpy's PCG64 with a fixed seed
  (He scaling), so every machine and every torch version computes the same features. Any image
  is scored: smaller than 32 pixels it is upsampled (bilinear), larger downsampled (antialiased);
  the network reads 3 channels, so an RGB image goes in as it is, a grey one repeated, and any
  other channel count (2, 4: RGBA, ...) as groups of 3 channels (RGB, then every channel left over
  repeated as grey), each group through the same network, their features side by side: a change
  in any channel moves the features.

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
        if image_channels < 1:
            raise UsageError(f"images need at least one channel, got {image_channels}")
        self.image_channels = image_channels
        self.groups = channel_groups(image_channels)
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
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if x.shape[1] != self.image_channels:
            raise UsageError(f"expected {self.image_channels}-channel images, got {x.shape[1]}")
        if x.shape[-1] != FEATURE_SIZE or x.shape[-2] != FEATURE_SIZE:
            # antialiasing only helps downsampling; a side below 32 (even 1 pixel) is upsampled
            down = x.shape[-1] > FEATURE_SIZE and x.shape[-2] > FEATURE_SIZE
            x = F.interpolate(x, size=(FEATURE_SIZE,) * 2, mode="bilinear", antialias=down)
        return np.concatenate([self._features(x[:, list(g)]) for g in self.groups], axis=1)

    def _features(self, x: torch.Tensor) -> np.ndarray:
        rows = []
        for i in range(0, len(x), 256):
            h = x[i : i + 256]
            for w in self.weights:
                h = F.relu(F.conv2d(h, w, stride=2, padding=1))
            rows.append(h.flatten(1) @ self.projection)
        return torch.cat(rows).numpy().astype(np.float64)


def channel_groups(channels: int) -> list[tuple[int, int, int]]:
    """The 3-channel inputs of the feature network for an image of ``channels`` channels: grey
    repeated, RGB as it is, else groups of three (RGB of RGBA) and each channel left over repeated
    as grey. 1 -> [(0, 0, 0)]; 3 -> [(0, 1, 2)]; 4 -> [(0, 1, 2), (3, 3, 3)];
    2 -> [(0, 0, 0), (1, 1, 1)]."""
    whole = channels // 3
    groups = [(3 * i, 3 * i + 1, 3 * i + 2) for i in range(whole)]
    return groups + [(c, c, c) for c in range(3 * whole, channels)]


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
