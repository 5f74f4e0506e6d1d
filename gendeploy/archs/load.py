"""Load a published image-to-image checkpoint (``.safetensors``, ``.pth``) into a module, without
running code from the file: safetensors holds tensors only, and ``.pth`` files are read with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers and nothing else.

The architecture is read from the state dict's keys and shapes, as spandrel does: RRDBNet
(ESRGAN, Real-ESRGAN x4plus/x2plus), SRVGGNetCompact (Real-ESRGAN general/anime), pix2pix's U-Net
and CycleGAN's ResNet, all built from ``gendeploy.archs``. Any other state dict goes to spandrel
where it imports; where it does not, the error names what to install (docs/notes/
issue19-spandrel.md: spandrel needs torchvision, which PyPI only has as a CUDA build of torch).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendeploy.archs.cyclegan import ResnetGenerator
from gendeploy.archs.esrgan import RRDBNet
from gendeploy.archs.pix2pix import UnetGenerator
from gendeploy.archs.realesrgan import SRVGGNetCompact
from gendeploy.errors import CheckpointError

SPANDREL_INSTALL = (
    "pip install spandrel torch==2.14.1 torchvision==0.29.1 (spandrel imports torchvision, and "
    "PyPI's torchvision is built against a CUDA torch: about 5.5 GB; see docs/notes/"
    "issue19-spandrel.md)"
)
# Training checkpoints of BasicSR / Real-ESRGAN keep the weights under one of these keys.
WRAPPERS = ("params_ema", "params", "state_dict", "model", "generator")


@dataclass(frozen=True)
class ImageModel:
    """A loaded image-to-image model and what it takes: ``(N, in_channels, H, W)`` with H and W
    multiples of ``size_multiple``, in ``(N, out_channels, scale*H, scale*W)`` out."""

    module: nn.Module  # in eval mode, on the CPU
    arch: str
    scale: int
    in_channels: int
    out_channels: int
    size_multiple: int
    loaded_by: str  # "gendeploy.archs" or "spandrel"
    value_range: tuple[float, float] = (0.0, 1.0)  # its pixels in and out (spandrel's: [0, 1])


def load_image_model(path: Path | str) -> ImageModel:
    """The model in ``path``; a ``CheckpointError`` with one line for anything else."""
    state = read_state_dict(Path(path))
    for detect in (_rrdbnet, _srvgg, _unet, _resnet):
        found = detect(state)
        if found is not None:
            return _loaded(found, state, path)
    return _through_spandrel(state, path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (pass a .safetensors or .pth state dict)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(path)
        else:
            with warnings.catch_warnings():  # torch's note on pickle protocols it then refuses
                warnings.simplefilter("ignore")
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code, truncated files, other formats: all refused
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise CheckpointError(
            f"{path} is not a state dict that loads without running code ({reason})"
        ) from None
    for key in WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in raw.items()}


Detected = tuple[nn.Module, int, int]  # the module, its input and output channels


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})


def _rrdbnet(state: dict[str, torch.Tensor]) -> Detected | None:
    if "conv_first.weight" not in state or "body.0.rdb1.conv1.weight" not in state:
        return None
    features, folded = state["conv_first.weight"].shape[:2]
    out_channels = state["conv_last.weight"].shape[0]
    fold = round((folded // out_channels) ** 0.5)  # pixel unshuffle: x2 folds 2x2, x1 4x4
    module = RRDBNet(
        in_channels=folded // fold**2,
        out_channels=out_channels,
        scale=4 // fold,
        features=features,
        blocks=_count(state, r"body\.(\d+)\.rdb1\.conv1\.weight"),
        growth=state["body.0.rdb1.conv1.weight"].shape[0],
    )
    return module, folded // fold**2, out_channels


def _srvgg(state: dict[str, torch.Tensor]) -> Detected | None:
    # Only PReLU activations hold weights (body.1.weight); ReLU and LeakyReLU leave no trace to
    # tell them apart, so such a state dict is not taken for this architecture (nor by spandrel).
    if "body.0.weight" not in state or "body.1.weight" not in state:
        return None
    if not all(re.fullmatch(r"body\.\d+\.(weight|bias)", k) for k in state):
        return None
    last = max(int(k.split(".")[1]) for k in state)
    features, in_channels = state["body.0.weight"].shape[:2]
    out_maps = state[f"body.{last}.weight"].shape[0]
    scale = round((out_maps / in_channels) ** 0.5)  # as spandrel: output channels = input's
    out_channels = out_maps // scale**2
    module = SRVGGNetCompact(in_channels, out_channels, features, (last - 2) // 2, scale)
    return module, in_channels, out_channels


def _unet(state: dict[str, torch.Tensor]) -> Detected | None:
    if "model.model.0.weight" not in state or "model.model.3.weight" not in state:
        return None
    features, in_channels = state["model.model.0.weight"].shape[:2]
    # "model.model." for the outermost level, one more "model." per level below it
    depth = max(k.count("model.") for k in state) - 1
    out_channels = state["model.model.3.weight"].shape[1]  # transposed: (in, out, k, k)
    norm = "batch" if any(k.endswith("running_mean") for k in state) else "instance"
    # Dropout holds no weights and acts only in train mode: leaving it out changes nothing here.
    module = UnetGenerator(in_channels, out_channels, depth, features, norm, dropout=False)
    return module, in_channels, out_channels


def _resnet(state: dict[str, torch.Tensor]) -> Detected | None:
    if "model.1.weight" not in state or "model.10.conv_block.1.weight" not in state:
        return None
    features, in_channels = state["model.1.weight"].shape[:2]
    blocks = _count(state, r"model\.(\d+)\.conv_block\.1\.weight")
    out_channels = state[f"model.{max(int(k.split('.')[1]) for k in state)}.weight"].shape[0]
    norm = "batch" if "model.2.weight" in state else "instance"
    dropout = "model.10.conv_block.6.weight" in state  # a Dropout shifts the second conv
    module = ResnetGenerator(in_channels, out_channels, features, blocks, norm, dropout)
    return module, in_channels, out_channels


def _loaded(found: Detected, state: dict[str, torch.Tensor], path: Path | str) -> ImageModel:
    module, in_channels, out_channels = found
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"{path} looks like {type(module).__name__} but does not fit it ({detail})"
        ) from None
    return ImageModel(
        module=module.eval(),
        arch=type(module).__name__,
        scale=int(getattr(module, "scale", 1)),
        in_channels=in_channels,
        out_channels=out_channels,
        size_multiple=int(getattr(module, "size_multiple", 1)),
        loaded_by="gendeploy.archs",
        value_range=getattr(module, "value_range", (0.0, 1.0)),
    )


def _through_spandrel(state: dict[str, torch.Tensor], path: Path | str) -> ImageModel:
    try:
        import spandrel
    except Exception:  # absent, or torchvision failing to import beside this torch
        raise CheckpointError(
            f"{path} is not RRDBNet, SRVGGNetCompact, a pix2pix U-Net or a CycleGAN ResNet; "
            f"other architectures load through spandrel: {SPANDREL_INSTALL}"
        ) from None
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except Exception as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise CheckpointError(f"{path}: spandrel knows no architecture for it ({reason})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise CheckpointError(f"{path} is a {type(descriptor).__name__}, not image to image")
    size = descriptor.size_requirements
    return ImageModel(
        module=descriptor.model.eval(),
        arch=str(descriptor.architecture.id),
        scale=int(descriptor.scale),
        in_channels=int(descriptor.input_channels),
        out_channels=int(descriptor.output_channels),
        size_multiple=max(1, int(size.multiple_of)),
        loaded_by="spandrel",
    )
