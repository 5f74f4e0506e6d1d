"""GAN networks: the classic MLP GAN and DCGAN, each optionally class-conditional, and a compact
super-resolution GAN (SRGAN).

Every noise generator has the export-friendly signature ``forward(z[, labels]) -> images``: tensors
in, one tensor out (N, C, H, W) in [-1, 1], deterministic. Conditional generators take ``labels`` as
a second input (int64, shape (N,)). The super-resolution generator is ``forward(images) -> images``:
(N, C, H, W) in, (N, C', s*H, s*W) out, at any H and W. Hyperparameters are constructor arguments
held in ``ModelConfig``.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from gendeploy.trainer.config import Arch, ModelConfig


class _LabelInput(nn.Module):
    """Concatenates a learned label embedding to the latent vector (conditional generators)."""

    def __init__(self, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, self.embed(labels)], dim=1)


class MLPGenerator(nn.Module):
    """The classic GAN generator: latent -> 256 -> 512 -> 1024 -> C*H*W, LeakyReLU(0.2), Tanh."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        in_dim = config.latent_dim
        self.label_input = (
            _LabelInput(config.num_classes, config.embed_dim) if config.conditional else None
        )
        if self.label_input is not None:
            in_dim += config.embed_dim
        hidden = config.width * 4  # width 64 -> the classic 256
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(0.2),
            # state: 256
            nn.Linear(hidden, hidden * 2),
            nn.LeakyReLU(0.2),
            # state: 512
            nn.Linear(hidden * 2, hidden * 4),
            nn.LeakyReLU(0.2),
            # state: 1024
            nn.Linear(hidden * 4, c * h * w),
            nn.Tanh(),
            # state: C*H*W
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = _condition(self.label_input, z, labels)
        return self.net(x).view(-1, *self.config.image_shape)


class _Discriminator(nn.Module):
    """``features`` then a head: returns (real/fake logit (N,), class logits (N, K) or None)."""

    features: nn.Module
    head: _Head

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(images)
        return self.head(h, labels), self.head.class_logits(h)


class MLPDiscriminator(_Discriminator):
    """Mirror of the MLP generator."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, h, w = config.image_shape
        hidden = config.width * 4
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, hidden * 4),
            nn.LeakyReLU(0.2),
            # state: 1024
            nn.Linear(hidden * 4, hidden * 2),
            nn.LeakyReLU(0.2),
            # state: 512
            nn.Linear(hidden * 2, hidden),
            nn.LeakyReLU(0.2),
            # state: 256
        )
        self.head = _Head(hidden, config.num_classes)


class DCGANGenerator(nn.Module):
    """pytorch/examples' DCGAN generator: ConvTranspose2d + BatchNorm + ReLU, Tanh out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        nz, ngf, nc = config.latent_dim, config.width, config.image_channels
        self.label_input = (
            _LabelInput(config.num_classes, config.embed_dim) if config.conditional else None
        )
        if self.label_input is not None:
            nz += config.embed_dim
        # 32x32 starts at 4x4 with ngf*4 maps; 64x64 adds one ngf*8 stage in front.
        mults = [8, 4, 2, 1] if config.image_size == 64 else [4, 2, 1]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ngf * mults[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * mults[0]),
            nn.ReLU(True),
            # state: (ngf*mults[0]) x 4 x 4
        ]
        for m_in, m_out in itertools.pairwise(mults):
            layers += [
                nn.ConvTranspose2d(ngf * m_in, ngf * m_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * m_out),
                nn.ReLU(True),
                # state: (ngf*m_out) x 2s x 2s
            ]
        layers += [
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
            # state: nc x image_size x image_size
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = _condition(self.label_input, z, labels)
        return self.net(x[:, :, None, None])


class DCGANDiscriminator(_Discriminator):
    """DCGAN discriminator: strided convs + BatchNorm + LeakyReLU; projection head if conditional"""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        ndf, nc = config.width, config.image_channels
        n_down = int(math.log2(config.image_size)) - 2  # down to 4x4
        layers: list[nn.Module] = [
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # state: ndf x S/2 x S/2
        ]
        ch = ndf
        for _ in range(n_down - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, inplace=True),
                # state: (2ch) x s/2 x s/2
            ]
            ch *= 2
        layers += [
            MinibatchStd(),
            # state: (ch+1) x 4 x 4
            nn.Flatten(),
            # state: (ch+1)*4*4
        ]
        self.features = nn.Sequential(*layers)
        self.head = _Head((ch + 1) * 16, config.num_classes)


class MinibatchStd(nn.Module):
    """Appends the batch's mean feature standard deviation as one more channel (Karras et al.,
    ProGAN): a generator that ignores z makes it near zero, which the discriminator then sees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = x.std(dim=0, unbiased=False).mean() if len(x) > 1 else x.new_zeros(())
        return torch.cat([x, std.expand(len(x), 1, *x.shape[2:])], dim=1)


class _Head(nn.Module):
    """Real/fake logit; conditional models add a projection term <embed(y), h> (Miyato & Koyama)
    and an auxiliary class logit head (AC-GAN), which makes label fidelity fast to learn."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        self.classify = nn.Linear(features, num_classes) if num_classes else None
        if self.embed is not None:
            # Zero start: a unit-variance embedding dotted with thousands of unnormalised
            # features gives logits in the tens and the GAN never starts; it begins unconditional.
            nn.init.zeros_(self.embed.weight)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is conditional: pass labels")
            out = out + (self.embed(labels) * h).sum(dim=1)
        return out

    def class_logits(self, h: torch.Tensor) -> torch.Tensor | None:
        return None if self.classify is None else self.classify(h)


class _ResidualBlock(nn.Module):
    """conv-ReLU-conv plus the input, no BatchNorm (EDSR, Lim et al.: it only costs at this size)"""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(features, features, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRGenerator(nn.Module):
    """A compact super-resolution generator: SRResNet's residual blocks (Ledig et al. 2017, without
    BatchNorm as in EDSR) at the input resolution, then one convolution into C' x scale^2 maps that
    a pixel shuffle turns into the image (ESPCN's sub-pixel convolution, Shi et al. 2016): nothing
    runs at the output resolution, which keeps a CPU step cheap. The input, nearest-upsampled, is
    added at the end (as in Real-ESRGAN's compact net), so the network learns the residual. Every
    layer is a convolution: any input size works.

    In eval mode the output is clamped to [-1, 1]; in training it is not, so a pixel that starts
    out of range still gets the L1 gradient back."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = config.scale
        self.size_multiple = 1
        c_in, c_out, f, s = config.input_shape[0], config.image_channels, config.width, config.scale
        self.head = nn.Sequential(nn.Conv2d(c_in, f, 3, 1, 1), nn.PReLU(f))
        # state: f x h x w
        self.body = nn.Sequential(
            *(_ResidualBlock(f) for _ in range(config.blocks)), nn.Conv2d(f, f, 3, 1, 1)
        )
        # state: f x h x w (added to the head's features)
        self.upsample = nn.Sequential(nn.Conv2d(f, c_out * s * s, 3, 1, 1), nn.PixelShuffle(s))
        # state: c_out x (s*h) x (s*w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.head(images)
        features = features + self.body(features)
        base = F.interpolate(images, scale_factor=float(self.scale), mode="nearest")
        if base.shape[1] != self.config.image_channels:  # grey -> RGB, or RGB -> grey
            base = base.mean(dim=1, keepdim=True).expand(-1, self.config.image_channels, -1, -1)
        out = self.upsample(features) + base
        return out if self.training else out.clamp(-1, 1)


def _condition(
    label_input: _LabelInput | None, z: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    if label_input is None:
        return z
    if labels is None:
        raise ValueError("this generator is conditional: pass labels as the second input")
    return label_input(z, labels)


def build_generator(config: ModelConfig) -> nn.Module:
    generators = {Arch.mlp: MLPGenerator, Arch.dcgan: DCGANGenerator, Arch.srgan: SRGenerator}
    return generators[config.arch](config)


def build_discriminator(config: ModelConfig) -> _Discriminator:
    """SRGAN's discriminator is DCGAN's on the high-resolution images (unconditional)."""
    discriminators = {
        Arch.mlp: MLPDiscriminator,
        Arch.dcgan: DCGANDiscriminator,
        Arch.srgan: DCGANDiscriminator,
    }
    return discriminators[config.arch](config)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convs, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def recalibrate_batchnorm(
    generator: nn.Module,
    config: ModelConfig,
    batches: int = 20,
    batch_size: int = 128,
    seed: int = 0,
) -> None:
    """Re-estimate BatchNorm running statistics of ``generator`` from its own forward passes.

    EMA weights never produced the running statistics they inherit, so an exported (eval-mode) EMA
    generator needs them re-estimated with a cumulative average over fresh noise.
    """
    bns = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    generator.train()
    device = next(generator.parameters()).device
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        z = torch.randn(batch_size, config.latent_dim, generator=g)
        y = (
            torch.randint(0, config.num_classes, (batch_size,), generator=g)
            if config.conditional
            else None
        )
        generator(z.to(device), None if y is None else y.to(device))
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    generator.eval()
