"""Real-ESRGAN's compact generator, SRVGGNetCompact (Wang et al. 2021, "Real-ESRGAN: Training
Real-World Blind Super-Resolution with Pure Synthetic Data"; the realesr-general-x4v3 and
realesr-animevideov3 models).

A plain VGG-style stack at the input resolution: a 3x3 convolution, ``convs`` more, each followed
by an activation (PReLU by default), and a last 3x3 convolution into ``C * scale^2`` maps that one
pixel shuffle turns into the image; the input, nearest-upsampled, is added, so the network learns
the residual. No convolution runs at the high resolution, which is what makes it fast.

State-dict keys are the original's: one ``body`` list holding convolutions and activations in turn
(``body.0`` the first convolution, ``body.1`` its PReLU, ..., the last convolution at
``body.{2 * convs + 2}``), so a published checkpoint loads with ``load_state_dict(strict=True)``.
Any input size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("prelu", "relu", "leakyrelu")


def _activation(kind: str, features: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=features)
    if kind == "relu":
        return nn.ReLU()
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.1)
    raise ValueError(f"activation {kind!r}: choose one of {', '.join(ACTIVATIONS)}")


class SRVGGNetCompact(nn.Module):
    """Defaults are realesr-general-x4v3's shape (32 convolutions of 64 features, x4, PReLU)."""

    size_multiple = 1
    value_range = (0.0, 1.0)  # pixels in and out, as BasicSR trains it

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 64,
        convs: int = 32,
        scale: int = 4,
        activation: str = "prelu",
    ) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be at least 1, got {scale}")
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, 1, 1)]
        layers.append(_activation(activation, features))
        # state: features x H x W
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, 1, 1), _activation(activation, features)]
        layers.append(nn.Conv2d(features, out_channels * scale * scale, 3, 1, 1))
        # state: (out_channels * scale^2) x H x W
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(scale)
        # state: out_channels x scale*H x scale*W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        base = F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return self.upsampler(out) + base


def srvgg_x4(channels: int = 3) -> SRVGGNetCompact:
    """realesr-general-x4v3's shape: 32 convolutions of 64 features (1.2M weights)."""
    return SRVGGNetCompact(channels, channels)


def srvgg_tiny(scale: int = 4, channels: int = 3) -> SRVGGNetCompact:
    """Four convolutions of 16 features: fast enough for tests on a CPU."""
    return SRVGGNetCompact(channels, channels, features=16, convs=4, scale=scale)
