"""CycleGAN's generator, a ResNet (Zhu et al. 2017, "Unpaired Image-to-Image Translation using
Cycle-Consistent Adversarial Networks", appendix 7.2, after Johnson et al. 2016), as
junyanz/pytorch-CycleGAN-and-pix2pix builds it (``resnet_9blocks``; ``resnet_6blocks`` for 128x128).

A 7x7 convolution on a reflection-padded input, two 3x3 stride-2 convolutions down, ``blocks``
residual blocks (reflection pad, 3x3 convolution, norm, ReLU, again without the ReLU, plus the
input), two 3x3 stride-2 transposed convolutions up (``output_padding=1``, so each exactly doubles)
and a 7x7 convolution on a reflection-padded map, Tanh out. InstanceNorm without affine weights by
default (no parameters, no running statistics: the same in train and eval mode).

Each stride-2 convolution rounds an odd side up and the transposed convolution doubles it, so the
output has the input's size only where the sides are multiples of 4 (a side of 4k+1 comes back
4k+4). Reflection padding needs each side larger than the pad (3) at the input.

State-dict keys are the original's: one ``model`` sequence, the first convolution ``model.1``, the
residual blocks ``model.10`` to ``model.18`` (their convolutions ``conv_block.1`` and
``conv_block.5``), the last ``model.26``; its checkpoints load with ``load_state_dict(strict=True)``
"""

from __future__ import annotations

import torch
from torch import nn

from gendeploy.archs.pix2pix import norm_layer


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: bool) -> None:
        super().__init__()
        bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator; defaults are its published models' (9 blocks, 64 maps, instance)."""

    size_multiple = 4
    scale = 1
    value_range = (-1.0, 1.0)  # pixels in and out (tanh)

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 64,
        blocks: int = 9,
        norm: str = "instance",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, features, 7, bias=bias),
            norm_layer(norm, features),
            nn.ReLU(),
            # state: features x H x W
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(features * mult, features * mult * 2, 3, 2, 1, bias=bias),
                norm_layer(norm, features * mult * 2),
                nn.ReLU(),
                # state: (2 * mult * features) x ceil(h/2) x ceil(w/2)
            ]
        layers += [ResnetBlock(features * 4, norm, dropout) for _ in range(blocks)]
        # state: (4 * features) x H/4 x W/4
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(
                    features * mult, features * mult // 2, 3, 2, 1, output_padding=1, bias=bias
                ),
                norm_layer(norm, features * mult // 2),
                nn.ReLU(),
                # state: (mult/2 * features) x 2h x 2w
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(features, out_channels, 7),
            nn.Tanh(),
            # state: out_channels x H x W
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def resnet_9blocks(channels: int = 3) -> ResnetGenerator:
    """CycleGAN's published generator (horse2zebra and the rest: 11.4M weights)."""
    return ResnetGenerator(channels, channels)


def resnet_tiny(channels: int = 3) -> ResnetGenerator:
    """Two blocks of 4 to 16 maps: fast enough for tests on a CPU."""
    return ResnetGenerator(channels, channels, features=4, blocks=2)
