# Run with the python of a venv where spandrel imports (attempt 3 of docs/notes/issue19-spandrel.md),
# after spandrel_make_checkpoints.py.
import sys, time
sys.path.insert(0, ".")  # the repository root: run from there
import torch
import spandrel
from spandrel import ModelLoader
from gendeploy.archs import esrgan, realesrgan, pix2pix, cyclegan
from safetensors.torch import load_file
ours = {"rrdbnet_x4": esrgan.rrdbnet_x4, "rrdbnet_tiny_x2": lambda: esrgan.RRDBNet(3, 3, 2, 16, 2, 8), "rrdbnet_tiny_x1": lambda: esrgan.RRDBNet(3, 3, 1, 16, 2, 8),
        "srvgg_x4": realesrgan.srvgg_x4, "srvgg_tiny_x2": lambda: realesrgan.srvgg_tiny(2),
        "unet_256": pix2pix.unet_256, "resnet_9blocks": cyclegan.resnet_9blocks}
print("torch", torch.__version__, "spandrel", spandrel.__version__)
for name, make in ours.items():
    for ext in ("safetensors", "pth"):
        path = f"/tmp/spd/ckpt/{name}.{ext}"
        try:
            d = ModelLoader().load_from_file(path)
        except Exception as e:
            print(f"{name}.{ext}: {type(e).__name__}: {str(e)[:100]}")
            continue
        m = make().eval(); m.load_state_dict(load_file(f"/tmp/spd/ckpt/{name}.safetensors"))
        x = torch.rand(1, 3, 24, 40)
        with torch.no_grad():
            diff = (d.model.eval()(x) - m(x)).abs().max().item()
        sr = d.size_requirements
        print(f"{name}.{ext}: arch {d.architecture.id}, scale {d.scale}, in {d.input_channels}, out {d.output_channels}, "
              f"size req minimum={sr.minimum} multiple_of={sr.multiple_of} square={sr.square}, max |spandrel - ours| = {diff:.1e}, tags {d.tags}")
