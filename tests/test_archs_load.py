"""Loading published image-to-image checkpoints (gendeploy.archs.load): every architecture found
from its state dict alone, in .safetensors and .pth (wrapped the way BasicSR saves them), with the
output the saved module gave; nothing else is unpickled, and what is not found names spandrel."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gendeploy.archs import cyclegan, esrgan, pix2pix, realesrgan
from gendeploy.archs.load import load_image_model
from gendeploy.errors import CheckpointError

# name -> (factory, scale, channels in/out, size multiple, a size to run)
MODELS: dict[str, tuple[Callable[[], nn.Module], int, int, int, tuple[int, int]]] = {
    "RRDBNet_x4": (lambda: esrgan.rrdbnet_tiny(4), 4, 3, 1, (5, 7)),
    "RRDBNet_x2_grey": (lambda: esrgan.rrdbnet_tiny(2, channels=1), 2, 1, 2, (6, 8)),
    "RRDBNet_x1": (lambda: esrgan.rrdbnet_tiny(1), 1, 3, 4, (8, 12)),
    "SRVGGNetCompact_x4": (lambda: realesrgan.srvgg_tiny(4), 4, 3, 1, (5, 7)),
    "SRVGGNetCompact_x2_grey": (lambda: realesrgan.srvgg_tiny(2, channels=1), 2, 1, 1, (5, 7)),
    "UnetGenerator_batch": (lambda: pix2pix.unet_tiny(depth=5), 1, 3, 32, (32, 64)),
    "UnetGenerator_instance": (
        lambda: pix2pix.UnetGenerator(1, 1, depth=3, features=4, norm="instance"),
        1,
        1,
        8,
        (16, 8),
    ),
    "ResnetGenerator": (lambda: cyclegan.resnet_tiny(), 1, 3, 4, (8, 12)),
    "ResnetGenerator_batch_dropout": (
        lambda: cyclegan.ResnetGenerator(3, 3, 4, 3, norm="batch", dropout=True),
        1,
        3,
        4,
        (12, 8),
    ),
}


def _randomised(module: nn.Module) -> nn.Module:
    """Random weights and BatchNorm statistics, so a wrong mapping could not pass by chance."""
    torch.manual_seed(1)
    with torch.no_grad():
        for t in module.state_dict().values():
            if not t.is_floating_point():
                continue
            # 1-d: biases, norm scales and statistics, PReLU slopes; else convolution kernels
            t.copy_(torch.rand_like(t) * 0.2 + 0.9 if t.dim() == 1 else torch.randn_like(t) / 10)
    return module.eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_architecture_is_found_from_its_state_dict(
    name: str, suffix: str, tmp_path: Path
) -> None:
    factory, scale, channels, multiple, size = MODELS[name]
    saved = _randomised(factory())
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, path)
    else:
        torch.save({"params_ema": saved.state_dict()}, path)  # BasicSR's training checkpoints
    loaded = load_image_model(path)
    assert loaded.arch == name.split("_")[0] and loaded.loaded_by == "gendeploy.archs"
    assert (loaded.scale, loaded.in_channels, loaded.out_channels) == (scale, channels, channels)
    assert loaded.size_multiple == multiple and not loaded.module.training
    x = torch.rand(2, channels, *size)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), saved(x))


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv_first.weight": _Payload()}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="not a state dict that loads without running"):
            load_image_model(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


def test_unknown_and_broken_state_dicts_get_one_line(tmp_path: Path) -> None:
    unknown = tmp_path / "swinir.safetensors"
    save_file({"layers.0.residual_group.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, unknown)
    try:
        import spandrel  # noqa: F401

        has_spandrel = True
    except Exception:
        has_spandrel = False
    with pytest.raises(CheckpointError) as caught:
        load_image_model(unknown)
    if not has_spandrel:
        assert "load through spandrel: pip install spandrel torch==2.14.1" in str(caught.value)
    cut = dict(esrgan.rrdbnet_tiny(4).state_dict())
    del cut["conv_hr.weight"]
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="looks like RRDBNet but does not fit it"):
        load_image_model(tmp_path / "cut.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_image_model(tmp_path / "text.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_image_model(tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_image_model(tmp_path / "missing.pth")
