# Run with the python of a venv holding the CPU torch and `pip install --no-deps spandrel einops`,
# after spandrel_make_checkpoints.py.
"""Would a stand-in torchvision let spandrel import beside the CPU torch? (Tried, not adopted.)"""
import sys, types
import torch
tv = types.ModuleType("torchvision"); tr = types.ModuleType("torchvision.transforms"); fn = types.ModuleType("torchvision.transforms.functional")
class InterpolationMode:  # what LaMa imports at module level
    NEAREST = "nearest"; BILINEAR = "bilinear"
def _missing(*a, **k):
    raise RuntimeError("torchvision stand-in: not available")
fn.InterpolationMode, fn.rotate, fn.normalize = InterpolationMode, _missing, _missing
tv.transforms, tr.functional = tr, fn
sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})
import spandrel
d = spandrel.ModelLoader().load_from_file("/tmp/spd/ckpt/rrdbnet_x4.safetensors")
print("torch", torch.__version__, "spandrel", spandrel.__version__, "with a 12-line stand-in torchvision: loaded", d.architecture.id, "x", d.scale)
