"""Probe each model's input-size constraints in eager mode: every side from 1 to 70 (the other
side fixed at a valid value): does it run, and is the output scale x the input?"""
import sys, math
import torch
from gendeploy.archs import esrgan, realesrgan, pix2pix, cyclegan
from gendeploy.trainer.config import ModelConfig, Arch
from gendeploy.trainer.models import build_generator
torch.set_num_threads(1)
cases = {
    "srgan digits-sr4x": (build_generator(ModelConfig(arch=Arch.srgan, image_size=32, scale=4, width=8, blocks=1)), 1, 4, 8),
    "SRVGGNetCompact x4": (realesrgan.srvgg_tiny(4), 3, 4, 8),
    "RRDBNet x4": (esrgan.rrdbnet_tiny(4), 3, 4, 8),
    "RRDBNet x2": (esrgan.rrdbnet_tiny(2), 3, 2, 8),
    "RRDBNet x1": (esrgan.rrdbnet_tiny(1), 3, 1, 8),
    "pix2pix U-Net depth 5": (pix2pix.unet_tiny(depth=5), 3, 1, 32),
    "CycleGAN ResNet": (cyclegan.resnet_tiny(), 3, 1, 8),
}
for name, (m, c, s, other) in cases.items():
    m.eval()
    ok, wrong, fail = [], [], []
    for h in range(1, 71):
        try:
            with torch.no_grad():
                y = m(torch.zeros(1, c, h, other))
            (ok if y.shape[-2] == s * h else wrong).append(h)
        except Exception:
            fail.append(h)
    multiple = 0
    for h in ok:
        multiple = math.gcd(multiple, h)
    all_of_multiple = all(h in ok for h in range(multiple, 71, multiple) if h >= (min(ok) if ok else 0))
    print(f"{name}: exact output for {len(ok)} sides (smallest {min(ok) if ok else None}, gcd {multiple}, every multiple from there: {all_of_multiple}); "
          f"runs with another size for {len(wrong)} (e.g. {wrong[:3]} -> {[ (4 * math.ceil(h / 4)) for h in wrong[:3]] if 'Cycle' in name else ''}); fails for {len(fail)} (e.g. {fail[:5]})")
