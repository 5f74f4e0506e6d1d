# Run with the python of a venv where spandrel imports (attempt 3 of docs/notes/issue19-spandrel.md),
# after spandrel_make_checkpoints.py.
import sys
sys.path.insert(0, ".")  # the repository root: run from there
import torch
from spandrel import ModelLoader
from safetensors.torch import load_file
from gendeploy.archs import esrgan
for s in (2, 1):
    path = f"/tmp/spd/ckpt/rrdbnet_g32_x{s}.safetensors"
    d = ModelLoader().load_from_file(path)
    m = esrgan.RRDBNet(3, 3, s, features=16, blocks=2, growth=32).eval()
    m.load_state_dict(load_file(path))
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        diff = (d.model.eval()(x) - m(x)).abs().max().item()
    print(f"RRDBNet x{s} (16 features, 2 blocks, growth 32): arch {d.architecture.id}, scale {d.scale}, in {d.input_channels}, size req multiple_of={d.size_requirements.multiple_of}, tags {d.tags}, max |spandrel - ours| = {diff:.1e}")
