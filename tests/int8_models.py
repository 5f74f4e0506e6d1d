"""Generators built to test the INT8 quality gate, exported with ``--model tests/int8_models.py:X``.

Each builds its weights from a fixed seed (a local generator: no global RNG side effects), so the
"user model" is the same every time without a weights file; each says so
(``gendeploy_loads_weights``), or ``gendeploy export --model`` would ask for --weights.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT = 16


def _seeded(module: nn.Module, seed: int = 0, gain: float = 1.0) -> None:
    """Uniform weights with fan-in scaling (outputs of order 1 through the layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            bound = gain * (3.0 / fan_in) ** 0.5 if p.dim() > 1 else 0.05
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)


class HostileGenerator(nn.Module):
    """One channel of the last convolution's input carries activations 100x the others.

    FP32 does not care: that channel's weights are divided by 100, so every channel contributes
    alike to the image. INT8 with one scale per activation tensor does: the scale is set by the
    outlier channel, and the other seven channels' activations, 100x smaller, fall into a few
    quantization steps. Keeping ``last`` in floating point (no quantizer on its input) rescues it.
    """

    gendeploy_loads_weights = True  # its constructor sets them

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(LATENT, 8 * 8 * 8)
        self.up = nn.ConvTranspose2d(8, 8, 4, 2, 1)
        # state: 8 x 16 x 16
        self.last = nn.Conv2d(8, 1, 3, padding=1)
        _seeded(self)
        outlier = torch.ones(1, 8, 1, 1)
        outlier[0, 0] = 100.0
        self.register_buffer("outlier", outlier)
        with torch.no_grad():
            self.last.weight[:, 0] /= 100.0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, 8, 8, 8)
        h = torch.relu(self.up(h)) * self.outlier
        return torch.tanh(self.last(h))


class CollapsingGenerator(nn.Module):
    """INT8 keeps a high PSNR but draws one image for every z.

    One linear layer makes five 16x16 channels: four z-dependent "detail" channels of magnitude
    ~0.001, and a fifth that is a fixed pattern of amplitude 1 (its bias; its weights are zero).
    The 1x1 convolution mixes them: the image is the pattern plus a detail of a couple of levels.
    The convolution's input is one activation tensor with one INT8 scale, set by the pattern
    (1/127 per step), so every detail value rounds to zero: each INT8 sample is the pattern. Per
    seed that costs the detail's couple of levels (PSNR ~40 dB, far above the INT8 bounds); across
    seeds it is a total loss of diversity, which only the distribution check sees.
    """

    gendeploy_loads_weights = True  # its constructor sets them

    def __init__(self) -> None:
        super().__init__()
        self.detail = nn.Linear(LATENT, 5 * 16 * 16)
        self.mix = nn.Conv2d(5, 1, 1)
        _seeded(self, seed=1)
        ramp = torch.linspace(-1.0, 1.0, 16)
        pattern = (ramp[None, :] * ramp[:, None]).reshape(-1)
        with torch.no_grad():
            weight = self.detail.weight.view(5, 256, LATENT)
            weight[:4] *= 1e-3
            weight[4] = 0.0
            bias = self.detail.bias.view(5, 256)
            bias[:4] = 0.0
            bias[4] = pattern
            self.mix.weight.copy_(torch.tensor([[[[8.0]], [[-8.0]], [[8.0]], [[-8.0]], [[0.5]]]]))
            self.mix.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(self.detail(z).view(-1, 5, 16, 16)))


class DoesNotQuantize(nn.Module):
    """One weighted layer whose input holds a constant 1000 beside z: INT8's one scale for that
    input (1000/127 per step) rounds every latent value to zero, so every INT8 image is the same.
    With a single weighted layer there is no fallback: INT8 is refused. FP16 is fine."""

    gendeploy_loads_weights = True  # its constructor sets them

    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.project = nn.Linear(latent + 1, 3 * 8 * 8)
        _seeded(self, seed=2)
        with torch.no_grad():
            self.project.weight[:, 0] = 0.0  # the constant only sets the scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.full_like(z[:, :1], 1000.0), z], dim=1)
        return torch.tanh(self.project(x)).view(-1, 3, 8, 8)


class NoLayerQuantizes(nn.Module):
    """Two weighted layers, each reading a constant 1000 beside its signal (as ``DoesNotQuantize``
    does for one): whichever layer runs INT8 rounds its signal to zero, so even with all but one
    layer kept in floating point every INT8 image is the same. The fallback has layers to try,
    and none is enough: INT8 does not quantize this generator, and the export says so."""

    gendeploy_loads_weights = True  # its constructor sets them

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(LATENT + 1, 32)
        self.image = nn.Linear(32 + 1, 16 * 16)
        _seeded(self, seed=3)
        with torch.no_grad():
            self.hidden.weight[:, 0] = 0.0  # the constants only set the scales
            self.image.weight[:, 0] = 0.0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.hidden(torch.cat([torch.full_like(z[:, :1], 1000.0), z], dim=1)))
        x = torch.cat([torch.full_like(h[:, :1], 1000.0), 3 * h], dim=1)
        return torch.tanh(self.image(x)).view(-1, 1, 16, 16)


class IgnoresZ(nn.Module):
    """Draws the same image whatever z: nothing for a distribution check to compare."""

    gendeploy_loads_weights = True  # its constructor sets them

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Parameter(torch.linspace(-0.9, 0.9, 16 * 16).view(1, 1, 16, 16))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image.expand(z.shape[0], -1, -1, -1) + 0 * z[:, :1, None, None]
