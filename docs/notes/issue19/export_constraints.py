"""What torch.export says about each model's size constraints when H and W are named Dims
(strict about what it may assume): its suggested fixes name the multiple an input must be."""
import sys, re, warnings, logging
import torch
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from gendeploy.archs import esrgan, realesrgan, pix2pix, cyclegan
torch.set_num_threads(1)
Dim = torch.export.Dim
cases = {
    "SRVGGNetCompact x4": (realesrgan.srvgg_tiny(4), (8, 12)),
    "RRDBNet x2 (unshuffle 2)": (esrgan.rrdbnet_tiny(2), (8, 12)),
    "RRDBNet x1 (unshuffle 4)": (esrgan.rrdbnet_tiny(1), (8, 12)),
    "pix2pix U-Net depth 5": (pix2pix.unet_tiny(depth=5), (32, 64)),
    "CycleGAN ResNet": (cyclegan.resnet_tiny(), (8, 12)),
}
for name, (m, (h, w)) in cases.items():
    m.eval()
    x = torch.rand(2, 3, h, w)
    try:
        ep = torch.export.export(m, (x,), dynamic_shapes=({0: Dim("n"), 2: Dim("h"), 3: Dim("w")},))
        print(f"{name}: exports with plain named Dims; range constraints {ep.range_constraints}")
    except Exception as e:
        text = str(e)
        fixes = re.findall(r"(?:_?h|_?w) = [^\n]*", text)
        print(f"{name}: {type(e).__name__}; suggested: {sorted(set(f.strip() for f in fixes))[:6]}")
