"""State dicts of gendeploy.archs models for the spandrel checks, into /tmp/spd/ckpt (run with the
project's .venv)."""
from pathlib import Path

import torch
from safetensors.torch import save_file

from gendeploy.archs import cyclegan, esrgan, pix2pix, realesrgan

out = Path("/tmp/spd/ckpt")
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
models = {
    "rrdbnet_x4": esrgan.rrdbnet_x4(), "rrdbnet_tiny_x2": esrgan.RRDBNet(3, 3, 2, 16, 2, 8),
    "rrdbnet_tiny_x1": esrgan.RRDBNet(3, 3, 1, 16, 2, 8),
    "rrdbnet_g32_x2": esrgan.RRDBNet(3, 3, 2, 16, 2, 32), "rrdbnet_g32_x1": esrgan.RRDBNet(3, 3, 1, 16, 2, 32),
    "srvgg_x4": realesrgan.srvgg_x4(), "srvgg_tiny_x2": realesrgan.srvgg_tiny(2),
    "unet_256": pix2pix.unet_256(), "resnet_9blocks": cyclegan.resnet_9blocks(),
}
for name, m in models.items():
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, out / f"{name}.safetensors")
    torch.save({"params_ema": m.state_dict()}, out / f"{name}.pth")
