"""ESRGAN's generator, RRDBNet (Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", section 3.1), as BasicSR and Real-ESRGAN build it.

A 3x3 convolution into ``features`` maps, ``blocks`` residual-in-residual dense blocks (RRDB) and
a 3x3 convolution, added to the first features; then two steps of nearest x2 + 3x3 convolution +
LeakyReLU, a 3x3 convolution at the high resolution and one out. No BatchNorm anywhere (the paper
removes it), residuals scaled by 0.2 (the paper's beta).

State-dict keys are BasicSR's ("new-arch ESRGAN", also Real-ESRGAN's): ``conv_first``,
``body.N.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``,
``conv_last``; so a published RRDBNet checkpoint (RealESRGAN_x4plus: 23 blocks, 64 features,
growth 32) loads with ``load_state_dict(strict=True)``.

Scale 4 takes any input size. Scales 2 and 1 fold the input first with pixel unshuffle (x2: 4*C
channels at half size, x1: 16*C at quarter size) and upsample x4 as usual, which is why their
sides must be multiples of 2 and 4: Real-ESRGAN's x2plus model is built this way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCALES = (1, 2, 4)


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output (dense
    connections); the last maps back to ``features`` and is added to the input, scaled by 0.2."""

    def __init__(self, features: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv3(features, growth)
        self.conv2 = _conv3(features + growth, growth)
        self.conv3 = _conv3(features + 2 * growth, growth)
        self.conv4 = _conv3(features + 3 * growth, growth)
        self.conv5 = _conv3(features + 4 * growth, features)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            # The published recipe: Kaiming init scaled down by 10, so a deep stack of residuals
            # starts near the identity (random weights give sane images, training starts stable).
            with torch.no_grad():
                nn.init.kaiming_normal_(conv.weight).mul_(0.1)
                assert conv.bias is not None
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
            # state: (features + k*growth) x H x W after the k-th
        return x + 0.2 * self.conv5(torch.cat(features, 1))


class RRDB(nn.Module):
    """Residual in residual: three dense blocks in a row, added to the input scaled by 0.2."""

    def __init__(self, features: int, growth: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN's generator. Defaults are the published x4 model's (RealESRGAN_x4plus, ESRGAN)."""

    value_range = (0.0, 1.0)  # pixels in and out, as BasicSR trains it

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        features: int = 64,
        blocks: int = 23,
        growth: int = 32,
    ) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"RRDBNet scales by 1, 2 or 4, not {scale}")
        self.scale = scale
        # Pixel unshuffle by 4 // scale folds x1 and x2 inputs into the x4 network's input.
        self.fold = 4 // scale
        self.size_multiple = self.fold
        self.conv_first = _conv3(in_channels * self.fold**2, features)
        # state: features x H/fold x W/fold
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = _conv3(features, features)
        self.conv_up1 = _conv3(features, features)
        # state: features x 2H/fold x 2W/fold
        self.conv_up2 = _conv3(features, features)
        # state: features x 4H/fold x 4W/fold = scale*H x scale*W
        self.conv_hr = _conv3(features, features)
        self.conv_last = _conv3(features, out_channels)
        # state: out_channels x scale*H x scale*W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold > 1:
            x = F.pixel_unshuffle(x, self.fold)
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for conv in (self.conv_up1, self.conv_up2):
            features = F.interpolate(features, scale_factor=2.0, mode="nearest")
            features = F.leaky_relu(conv(features), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), 0.2))


def rrdbnet_x4(channels: int = 3) -> RRDBNet:
    """The published ESRGAN / RealESRGAN_x4plus shape: 23 blocks, 64 features (16.7M weights)."""
    return RRDBNet(channels, channels, scale=4)


def rrdbnet_tiny(scale: int = 4, channels: int = 3) -> RRDBNet:
    """The same network, two blocks of 16 features (growth 32, the published one: spandrel reads
    no other): fast enough for tests on a CPU."""
    return RRDBNet(channels, channels, scale=scale, features=16, blocks=2, growth=32)
