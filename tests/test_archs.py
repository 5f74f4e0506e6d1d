"""The published image-to-image generators in gendeploy.archs: shapes at allowed sizes (non-square,
several batch sizes), the size constraints each one has, determinism in eval mode, and state-dict
layouts that are the original repositories' own (tests/golden/archs_state_dicts.json: key names
and shapes read from BasicSR's and pytorch-CycleGAN-and-pix2pix's own classes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from gendeploy.archs import cyclegan, esrgan, pix2pix, realesrgan

GOLDEN = Path(__file__).parent / "golden" / "archs_state_dicts.json"

# name -> (factory, channels, (H, W) sizes the architecture allows)
TINY: dict[str, tuple[Callable[[], nn.Module], int, list[tuple[int, int]]]] = {
    "rrdbnet_x4": (lambda: esrgan.rrdbnet_tiny(4), 3, [(7, 13), (16, 9), (1, 1)]),
    "rrdbnet_x2": (lambda: esrgan.rrdbnet_tiny(2), 3, [(6, 14), (16, 10)]),
    "rrdbnet_x1": (lambda: esrgan.rrdbnet_tiny(1, channels=1), 1, [(8, 12), (20, 4)]),
    "srvgg_x4": (lambda: realesrgan.srvgg_tiny(4), 3, [(7, 13), (1, 5)]),
    "srvgg_x2_grey": (lambda: realesrgan.srvgg_tiny(2, channels=1), 1, [(9, 6)]),
    "unet": (lambda: pix2pix.unet_tiny(depth=5), 3, [(32, 64), (96, 32)]),
    "resnet": (lambda: cyclegan.resnet_tiny(), 3, [(8, 12), (20, 8), (36, 44)]),
}


def _build(name: str) -> tuple[nn.Module, int, list[tuple[int, int]]]:
    factory, channels, sizes = TINY[name]
    torch.manual_seed(0)
    return factory().eval(), channels, sizes


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("batch", [1, 3])
def test_every_model_upscales_non_square_inputs_by_its_scale(name: str, batch: int) -> None:
    model, channels, sizes = _build(name)
    scale = model.scale
    for h, w in sizes:
        assert h % model.size_multiple == 0 and w % model.size_multiple == 0
        with torch.no_grad():
            out = model(torch.rand(batch, channels, h, w) * 2 - 1)
        assert out.shape == (batch, channels, scale * h, scale * w)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_model_is_deterministic_and_batch_invariant_in_eval_mode(name: str) -> None:
    model, channels, sizes = _build(name)
    x = torch.rand(3, channels, *sizes[0]) * 2 - 1
    with torch.no_grad():
        once, again, alone = model(x), model(x), model(x[1:2])
    assert torch.equal(once, again)
    torch.testing.assert_close(alone, once[1:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "bad", "what"),
    [
        (pix2pix.unet_tiny(depth=5), (32, 48), "RuntimeError"),  # 48 is not a multiple of 32
        (esrgan.rrdbnet_tiny(2), (7, 8), "RuntimeError"),  # pixel unshuffle needs even sides
        (cyclegan.resnet_tiny(), (9, 12), (12, 12)),  # 4k+1 comes back 4k+4: not the input size
    ],
    ids=["unet", "rrdbnet_x2", "resnet"],
)
def test_a_side_off_the_size_multiple_fails_or_changes_size(
    model: nn.Module, bad: tuple[int, int], what: object
) -> None:
    """What phase 2's probe must find: a U-Net side off 2**depth does not run at all, a ResNet
    side off 4 runs but returns another size (so an export must pad and crop)."""
    x = torch.zeros(1, 3, *bad)
    if what == "RuntimeError":
        with pytest.raises(RuntimeError), torch.no_grad():
            model.eval()(x)
    else:
        with torch.no_grad():
            assert tuple(model.eval()(x).shape[-2:]) == what


@pytest.mark.parametrize(
    ("factory", "weights"),
    [
        (esrgan.rrdbnet_x4, 16_697_987),  # RealESRGAN_x4plus, ESRGAN
        (realesrgan.srvgg_x4, 1_213_296),  # realesr-general-x4v3
        (pix2pix.unet_256, 54_413_955),  # pix2pix unet_256 (batch norm)
        (cyclegan.resnet_9blocks, 11_378_179),  # CycleGAN resnet_9blocks
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_published_shapes_have_the_published_weight_counts(
    factory: Callable[[], nn.Module], weights: int
) -> None:
    assert sum(p.numel() for p in factory().parameters()) == weights


def _golden_models() -> dict[str, nn.Module]:
    return {
        "esrgan.RRDBNet(3, 3, scale=4, features=16, blocks=2, growth=8)": esrgan.RRDBNet(
            3, 3, scale=4, features=16, blocks=2, growth=8
        ),
        "esrgan.RRDBNet(3, 3, scale=2, features=16, blocks=2, growth=8)": esrgan.RRDBNet(
            3, 3, scale=2, features=16, blocks=2, growth=8
        ),
        "realesrgan.SRVGGNetCompact(3, 3, features=16, convs=4, scale=4)": (
            realesrgan.SRVGGNetCompact(3, 3, features=16, convs=4, scale=4)
        ),
        "pix2pix.UnetGenerator(3, 3, depth=6, features=4, norm='batch', dropout=True)": (
            pix2pix.UnetGenerator(3, 3, depth=6, features=4, norm="batch", dropout=True)
        ),
        "cyclegan.ResnetGenerator(3, 3, features=4, blocks=2)": cyclegan.ResnetGenerator(
            3, 3, features=4, blocks=2
        ),
    }


def test_state_dict_keys_and_shapes_are_the_original_repositories() -> None:
    golden = json.loads(GOLDEN.read_text())
    models = _golden_models()
    assert sorted(golden) == sorted(models)
    for name, model in models.items():
        ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        assert ours == golden[name], name


def test_a_published_layout_loads_strictly_and_a_foreign_one_is_refused() -> None:
    """What loading a real checkpoint needs: the keys fit exactly (strict), and a state dict of
    another shape of the same architecture does not silently load."""
    small, other = esrgan.rrdbnet_tiny(4), esrgan.rrdbnet_tiny(2)
    esrgan.rrdbnet_tiny(4).load_state_dict(small.state_dict(), strict=True)
    with pytest.raises(RuntimeError, match=r"size mismatch for conv_first\.weight"):
        small.load_state_dict(other.state_dict(), strict=True)


def test_bad_hyperparameters_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="scales by 1, 2 or 4, not 3"):
        esrgan.RRDBNet(scale=3)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        realesrgan.SRVGGNetCompact(activation="gelu")
    with pytest.raises(ValueError, match="norm 'group'"):
        cyclegan.ResnetGenerator(norm="group")
    with pytest.raises(ValueError, match="at least 2 levels"):
        pix2pix.UnetGenerator(depth=1)
