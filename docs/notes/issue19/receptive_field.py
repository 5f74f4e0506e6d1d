"""Receptive field of each image-to-image model, measured: the same topology with one or two maps,
every weight made positive and every bias zero (nothing can cancel), BatchNorm the identity; a
single input pixel's influence is then nonzero exactly where the network can reach. Instance norm
is replaced by the identity too: with it, every output pixel depends on the whole image (its
mean and variance), whatever the convolutions reach."""
import sys, time
import torch
from torch import nn
from gendeploy.archs import esrgan, realesrgan, pix2pix, cyclegan
from gendeploy.trainer.config import ModelConfig, Arch
from gendeploy.trainer.models import build_generator
torch.set_num_threads(1)

def positive(m):
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            mod.weight.data = mod.weight.data.abs() + 0.01
            if mod.bias is not None: mod.bias.data.zero_()
        elif isinstance(mod, nn.PReLU):
            mod.weight.data.fill_(1.0)
    for name, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                setattr(mod, cname, nn.Identity())
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            # binarise after every convolution: long paths would otherwise underflow to zero
            mod.register_forward_hook(lambda _m, _i, out: (out > 0).to(out.dtype))
    return m.eval()

def radius(model, side, scale, channels=1, multiple=1):
    side = side // multiple * multiple
    x = torch.zeros(1, channels, side, side)
    c = side // 2
    x[..., c, c] = 1.0
    with torch.no_grad():
        y = model(x)[0].abs().sum(0)
    rows = torch.nonzero(y.sum(1) > 0)[:, 0]
    # output rows reached, in input pixels from the impulse
    lo, hi = rows.min().item() / scale, (rows.max().item() + 1) / scale
    return max(c - lo, hi - (c + 1)), side, y.shape[-1]

cases = [
    ("srgan digits-sr4x (trainer)", lambda: build_generator(ModelConfig(arch=Arch.srgan, image_size=32, scale=4, width=2, blocks=4)), 64, 4, 1, 1),
    ("SRVGGNetCompact general-x4v3 (32 convs)", lambda: realesrgan.SRVGGNetCompact(1, 1, 2, 32, 4), 128, 4, 1, 1),
    ("SRVGGNetCompact animevideov3 (16 convs)", lambda: realesrgan.SRVGGNetCompact(1, 1, 2, 16, 4), 96, 4, 1, 1),
    ("RRDBNet x4 (23 blocks)", lambda: esrgan.RRDBNet(1, 1, 4, features=1, blocks=23, growth=1), 720, 4, 1, 1),
    ("RRDBNet x4 anime (6 blocks)", lambda: esrgan.RRDBNet(1, 1, 4, features=1, blocks=6, growth=1), 256, 4, 1, 1),
    ("RRDBNet x2 (23 blocks, unshuffle 2)", lambda: esrgan.RRDBNet(1, 1, 2, features=1, blocks=23, growth=1), 1440, 2, 1, 2),
    ("pix2pix unet_256 (8 levels)", lambda: pix2pix.UnetGenerator(1, 1, 8, 1, "batch", False), 2048, 1, 1, 256),
    ("CycleGAN resnet_9blocks", lambda: cyclegan.ResnetGenerator(1, 1, 1, 9), 256, 1, 1, 4),
]
for name, make, side, scale, ch, mult in cases:
    t = time.perf_counter()
    r, s, o = radius(positive(make()), side, scale, ch, mult)
    print(f"{name}: reaches {r:g} input pixels each side (input {s}x{s}, {time.perf_counter() - t:.0f}s)")
