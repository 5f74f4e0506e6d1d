# Run with the python of a venv where spandrel imports (attempt 3 of docs/notes/issue19-spandrel.md),
# after spandrel_make_checkpoints.py.
"""gendeploy.archs.load.load_image_model under the spandrel venv: our architectures load through
gendeploy.archs, one only spandrel knows (SPAN) through spandrel."""
import sys
sys.path.insert(0, ".")  # the repository root: run from there
import torch
from safetensors.torch import save_file
from spandrel.architectures.SPAN import SPAN  # the class spandrel builds for SPAN checkpoints
from gendeploy.archs.load import load_image_model
from gendeploy.archs import esrgan
torch.manual_seed(0)
span = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4).eval()
save_file({k: v.contiguous() for k, v in span.state_dict().items()}, "/tmp/spd/ckpt/span_x4.safetensors")
for path in ("/tmp/spd/ckpt/span_x4.safetensors", "/tmp/spd/ckpt/rrdbnet_x4.safetensors", "/tmp/spd/ckpt/srvgg_x4.pth", "/tmp/spd/ckpt/unet_256.safetensors", "/tmp/spd/ckpt/resnet_9blocks.pth"):
    m = load_image_model(path)
    print(f"{path.split('/')[-1]}: {m.arch} x{m.scale} in {m.in_channels} out {m.out_channels} multiple {m.size_multiple} via {m.loaded_by}")
x = torch.rand(1, 3, 12, 20)
m = load_image_model("/tmp/spd/ckpt/span_x4.safetensors")
with torch.no_grad():
    print("SPAN through spandrel vs the module saved: max diff", (m.module(x) - span(x)).abs().max().item(), tuple(m.module(x).shape))
