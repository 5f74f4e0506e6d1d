"""pix2pix's generator, a U-Net (Isola et al. 2017, "Image-to-Image Translation with Conditional
Adversarial Networks", section 3.1.1 and appendix 6.1.1), as junyanz/pytorch-CycleGAN-and-pix2pix
builds it (``unet_256``: 8 levels, ``unet_128``: 7).

Each level halves the image with a 4x4 stride-2 convolution on the way down and doubles it with a
4x4 stride-2 transposed convolution on the way up; the skip connection concatenates a level's
input to what came back up from the level below. Down: LeakyReLU(0.2), up: ReLU, Tanh out;
BatchNorm (or InstanceNorm without affine weights) everywhere except the outermost convolutions
and the innermost way down. Feature maps double per level up to 8 * ``features``.

Every level halves the sides, and a skip connection only fits where that division was exact: the
sides must be multiples of ``2**depth`` (256 for unet_256).

State-dict keys are the original's nested layout (``model.model.0`` the outermost convolution,
``model.model.1.model.1`` the next level's, ...), so its checkpoints load with
``load_state_dict(strict=True)``. The original runs its tests in train mode by default (BatchNorm
on the test batch's own statistics); exported models run in eval mode, on the running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """pix2pix's and CycleGAN's two norms; convolutions carry a bias only with the instance norm
    (BatchNorm's shift makes it redundant)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"norm {kind!r}: choose one of {', '.join(NORMS)}")


class UnetLevel(nn.Module):
    """One level of the U-Net: down, the levels below (``inner``), up; the input is concatenated
    to the result on every level but the outermost."""

    def __init__(
        self,
        outer: int,
        inner: int,
        below: UnetLevel | None,
        norm: str,
        in_channels: int | None = None,
        dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = in_channels is not None
        bias = norm == "instance"
        down = nn.Conv2d(in_channels or outer, inner, 4, 2, 1, bias=bias)
        # state: inner x H/2 x W/2
        if self.outermost:
            assert below is not None
            up = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1)
            layers: list[nn.Module] = [down, below, nn.ReLU(), up, nn.Tanh()]
        elif below is None:  # innermost: nothing to concatenate below it
            up = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, norm_layer(norm, outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2), down, norm_layer(norm, inner), below]
            # state: 2*inner x H/2 x W/2 (the level below concatenates its input)
            layers += [nn.ReLU(), up, norm_layer(norm, outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        # state: outer x H x W
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """pix2pix's U-Net: ``depth`` levels (8 for 256x256 images), ``features`` maps at the top."""

    value_range = (-1.0, 1.0)  # pixels in and out (tanh)

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        depth: int = 8,
        features: int = 64,
        norm: str = "batch",
        dropout: bool = True,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got {depth}")
        self.scale = 1
        self.size_multiple = 2**depth
        width = [features * min(2**i, 8) for i in range(depth)]  # level i's inner maps
        level: UnetLevel | None = None
        for i in reversed(range(depth)):
            # pix2pix's dropout: the levels whose maps stopped widening, innermost excepted
            level = UnetLevel(
                outer=out_channels if i == 0 else width[i - 1],
                inner=width[i],
                below=level,
                norm=norm,
                in_channels=in_channels if i == 0 else None,
                dropout=dropout and 4 <= i < depth - 1,
            )
        assert level is not None
        self.model = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def unet_256(channels: int = 3) -> UnetGenerator:
    """pix2pix's default generator (54.4M weights); sides multiples of 256."""
    return UnetGenerator(channels, channels, depth=8)


def unet_tiny(channels: int = 3, depth: int = 5) -> UnetGenerator:
    """Five levels of 4 to 32 maps: sides multiples of 32, fast enough for tests on a CPU."""
    return UnetGenerator(channels, channels, depth=depth, features=4)
