"""Generators with the calling conventions of two widely used StyleGAN/BigGAN ports (issue 20).

Written for gendeploy (no code copied), self-contained so that ``--model
tests/ported_like.py:rosinality`` imports it alone:

- ``rosinality``: rosinality's stylegan2-pytorch convention (MIT): ``forward(styles, ...,
  truncation=1, truncation_latent=None, input_is_latent=False, noise=None,
  randomize_noise=True)`` with a *list* of latents, ``if truncation < 1:`` in Python, random noise
  unless ``randomize_noise=False`` (then the ``noises.noise_<i>`` buffers), and ``(image, None)``
  returned. Its fused modulated convolutions read the batch as ``input.shape[0]`` (no ``int()``)
  and upsample with a grouped transposed convolution then a blur.
- ``port``: a popular conditional port's convention: ``forward(z, class_label, truncation)``
  with a one-hot class vector, ``truncation`` a Python float (no default) whose ``math.modf``
  picks precomputed normalisation statistics, and ``tanh(x[:, :3])`` as output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

STYLE_DIM = 64
CLASSES = 10


class EqualLinear(nn.Module):
    def __init__(self, cin: int, cout: int, lr_mul: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full([cout], bias_init))
        self.scale, self.lr_mul = lr_mul / math.sqrt(cin), lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModulatedConv(nn.Module):
    """Fused: per-sample weights, one grouped convolution (upsample: transposed, then a blur)."""

    def __init__(self, cin: int, cout: int, k: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = EqualLinear(STYLE_DIM, cin, bias_init=1.0)
        self.scale, self.demodulate, self.up = 1 / math.sqrt(cin * k * k), demodulate, up
        blur = torch.tensor([1.0, 3.0, 3.0, 1.0])
        self.register_buffer("blur", torch.outer(blur, blur) / blur.sum() ** 2 * 4)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, cin, height, width = x.shape
        _, cout, _, k, _ = self.weight.shape
        weight = self.scale * self.weight * self.modulation(style).view(batch, 1, cin, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, cout, 1, 1, 1)
        x = x.view(1, batch * cin, height, width)
        if not self.up:
            weight = weight.view(batch * cout, cin, k, k)
            out = F.conv2d(x, weight, padding=k // 2, groups=batch)
            return out.view(batch, cout, *out.shape[2:])
        weight = weight.transpose(1, 2).reshape(batch * cin, cout, k, k)
        out = F.conv_transpose2d(x, weight, stride=2, groups=batch)
        out = out.view(batch, cout, *out.shape[2:])  # state: 2H+1 x 2W+1, blurred to 2H x 2W
        kernel = self.blur[None, None].repeat(cout, 1, 1, 1)
        return F.conv2d(F.pad(out, [1, 1, 1, 1]), kernel, groups=cout)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()


class StyledConv(nn.Module):
    def __init__(self, cin: int, cout: int, resolution: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv(cin, cout, 3, up=up)
        self.noise_weight = nn.Parameter(torch.zeros(1))  # rosinality's init: no noise
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.resolution = resolution

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None):
        x = self.conv(x, style)
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()
        x = x + self.noise_weight * noise
        return F.leaky_relu(x + self.bias, 0.2) * math.sqrt(2)


class RosinalityLike(nn.Module):
    def __init__(self, size: int = 16, channels: int = 32, n_mlp: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [PixelNorm()]  # as rosinality's: z normalised inside style
        for _ in range(n_mlp):
            layers += [EqualLinear(STYLE_DIM, STYLE_DIM, lr_mul=0.01), nn.LeakyReLU(0.2)]
        self.style = nn.Sequential(*layers)
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))
        self.conv1 = StyledConv(channels, channels, 4)
        self.to_rgb1 = ModulatedConv(channels, 3, 1, demodulate=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        self.noises.register_buffer("noise_0", torch.randn(1, 1, 4, 4))
        for i, res in enumerate(2**r for r in range(3, int(math.log2(size)) + 1)):
            self.convs.append(StyledConv(channels, channels, res, up=True))
            self.convs.append(StyledConv(channels, channels, res))
            self.to_rgbs.append(ModulatedConv(channels, 3, 1, demodulate=False))
            for j in (2 * i + 1, 2 * i + 2):
                self.noises.register_buffer(f"noise_{j}", torch.randn(1, 1, res, res))
        self.num_layers = 1 + len(self.convs)
        self.n_latent = 2 + len(self.convs)

    def mean_latent(self, n_latent: int) -> torch.Tensor:
        return self.style(torch.randn(n_latent, STYLE_DIM)).mean(0, keepdim=True)

    def forward(self, styles: list[torch.Tensor], return_latents: bool = False,
                inject_index: int | None = None, truncation: float = 1,
                truncation_latent: torch.Tensor | None = None, input_is_latent: bool = False,
                noise: list[torch.Tensor | None] | None = None, randomize_noise: bool = True,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            buffers = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
            noise = [None] * self.num_layers if randomize_noise else buffers
        if truncation < 1:  # a Python branch on truncation: a per-sample tensor cannot take it
            assert truncation_latent is not None
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        latent = styles[0].unsqueeze(1).repeat(1, self.n_latent, 1)
        out = self.conv1(self.input.repeat(latent.shape[0], 1, 1, 1), latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for i, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * i](out, latent[:, 2 * i + 1], noise[2 * i + 1])
            out = self.convs[2 * i + 1](out, latent[:, 2 * i + 2], noise[2 * i + 2])
            skip = F.interpolate(skip, scale_factor=2, mode="bilinear") + to_rgb(
                out, latent[:, 2 * i + 3]
            )
        return (skip, latent) if return_latents else (skip, None)


class ConditionalNorm(nn.Module):
    """Normalisation by statistics precomputed for ``n_stats`` values of truncation, interpolated
    with ``math.modf``; scale and offset from the condition vector, if any."""

    def __init__(self, channels: int, cond_dim: int = 0, n_stats: int = 51) -> None:
        super().__init__()
        self.register_buffer("running_means", torch.randn(n_stats, channels) * 0.1)
        self.register_buffer("running_vars", torch.rand(n_stats, channels) + 0.5)
        self.step_size = 1.0 / (n_stats - 1)
        self.scale = nn.Linear(cond_dim, channels, bias=False) if cond_dim else None
        self.offset = nn.Linear(cond_dim, channels, bias=False) if cond_dim else None

    def forward(self, x: torch.Tensor, truncation: float, cond: torch.Tensor | None = None):
        coef, start = math.modf(truncation / self.step_size)
        i, j = int(start), min(int(start) + 1, len(self.running_means) - 1)
        mean = self.running_means[i] * coef + self.running_means[j] * (1 - coef)
        var = self.running_vars[i] * coef + self.running_vars[j] * (1 - coef)
        x = (x - mean.reshape(1, -1, 1, 1)) / torch.sqrt(var.reshape(1, -1, 1, 1) + 1e-4)
        if self.scale is None or self.offset is None or cond is None:
            return x
        return x * (1 + self.scale(cond)[:, :, None, None]) + self.offset(cond)[:, :, None, None]


class PortLike(nn.Module):
    def __init__(self, z_dim: int = STYLE_DIM, classes: int = CLASSES, ch: int = 32) -> None:
        super().__init__()
        self.embeddings = nn.Linear(classes, z_dim, bias=False)
        self.gen_z = nn.Linear(2 * z_dim, 4 * 4 * ch)
        self.norms = nn.ModuleList(ConditionalNorm(ch, 2 * z_dim) for _ in range(2))
        self.convs = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(2))
        self.bn = ConditionalNorm(ch)
        self.conv_to_rgb = nn.Conv2d(ch, ch, 3, padding=1)  # ch outputs, the first 3 kept
        self.ch = ch

    def forward(self, z: torch.Tensor, class_label: torch.Tensor, truncation: float):
        assert 0 < truncation <= 1
        cond = torch.cat((z, self.embeddings(class_label)), dim=1)
        x = self.gen_z(cond).view(-1, 4, 4, self.ch).permute(0, 3, 1, 2).contiguous()
        for norm, conv in zip(self.norms, self.convs, strict=True):  # state: 8x8, then 16x16
            x = F.interpolate(torch.relu(norm(x, truncation, cond)), scale_factor=2)
            x = x + conv(x)
        x = self.conv_to_rgb(torch.relu(self.bn(x, truncation)))
        return torch.tanh(x[:, :3, ...])


def rosinality() -> RosinalityLike:
    """16x16, 32 channels, noise weights at a trained-like 0.1."""
    torch.manual_seed(0)
    g = RosinalityLike()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise_weight"):
                p.fill_(0.1)
    return g.eval()


def port() -> PortLike:
    """16x16, 32 channels, conditional on 10 classes."""
    torch.manual_seed(0)
    return PortLike().eval()


for _factory in (rosinality, port):
    _factory.gendeploy_loads_weights = True  # type: ignore[attr-defined]  # seeded in the factory
