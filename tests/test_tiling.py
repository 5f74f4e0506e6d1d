"""Tiling (``gendeploy.tiling``): windows cover every pixel once, pad-and-crop, refusals, and
tiled output equal to the whole image's where the receptive field fits in the margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gendeploy.archs.realesrgan import srvgg_tiny
from gendeploy.export.image_probe import measure_reach, probe_size
from gendeploy.export.image_source import in_unit_range
from gendeploy.testimages import synthetic_image, synthetic_images
from gendeploy.tiling import Geometry, render, to_model, upscale, windows
from gendeploy.trainer.config import Arch, ModelConfig
from gendeploy.trainer.models import build_generator


def nearest(scale: int):
    def run(x: np.ndarray) -> np.ndarray:
        return x.repeat(scale, axis=2).repeat(scale, axis=3)

    return run


def torch_model(module: torch.nn.Module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (130, 129), (257, 64)])
def test_the_cores_cover_every_pixel_once_and_every_window_has_one_shape(
    shape: tuple[int, int],
) -> None:
    g = Geometry(scale=2, tile=32, margin=8)
    (wh, ww), cut = windows(*shape, g)
    covered = np.zeros(shape, np.int32)
    for w in cut:
        assert w.top >= 0 and w.top + wh <= shape[0] and w.left + ww <= shape[1]
        # a core sees its margin of real image on each side, or the image's own edge
        assert w.core_top - w.top >= min(8, w.core_top)
        assert (w.top + wh) - w.core_bottom >= min(8, shape[0] - w.core_bottom)
        covered[w.core_top : w.core_bottom, w.core_left : w.core_right] += 1
    assert (covered == 1).all()
    assert (wh, ww) == (min(48, shape[0]), min(48, shape[1]))


def test_an_image_off_the_multiple_is_padded_and_cropped_back() -> None:
    image = synthetic_image(37, 50, 3, seed=0)
    g = Geometry(scale=2, size_multiple=8, min_side=16, tile=16, margin=8)
    out = upscale(image, nearest(2), g)
    assert out.shape == (74, 100, 3)
    assert np.array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))


def test_images_that_cannot_run_are_refused_with_one_line() -> None:
    g = Geometry(scale=1, tile=16, margin=8, tiled=False)
    with pytest.raises(ValueError, match="empty"):
        upscale(np.zeros((0, 5, 3), np.uint8), nearest(1), g)
    with pytest.raises(ValueError, match=r"not tiled .* up to 32 x 32 pixels whole"):
        upscale(np.zeros((33, 8, 3), np.uint8), nearest(1), g)
    assert upscale(np.zeros((32, 32, 3), np.uint8), nearest(1), g).shape == (32, 32, 3)


def test_a_model_returning_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match="returned 32 x 32 pixels for a 16 x 16 window"):
        upscale(np.zeros((16, 16, 1), np.uint8), nearest(2), Geometry(scale=4, tile=16))


def test_rendering_round_trips_uint8_through_the_model_range() -> None:
    images = synthetic_images(2, 9, 11, 3)
    assert np.array_equal(render(to_model(images)), images)


def test_progress_is_reported_per_batch_of_windows() -> None:
    seen: list[tuple[int, int]] = []
    g = Geometry(scale=1, tile=8, margin=2)
    upscale(
        synthetic_image(20, 20, 1, 0), nearest(1), g, batch=4, progress=lambda *a: seen.append(a)
    )
    assert seen == [(4, 9), (8, 9), (9, 9)]


def test_tiled_equals_whole_where_the_receptive_field_fits_in_the_margin() -> None:
    torch.manual_seed(0)
    module = in_unit_range(srvgg_tiny(4), (0.0, 1.0))
    reach = measure_reach(module, 3, 4, 1)
    assert reach == 6  # 6 convolutions of 3x3 at the input's resolution (pixel shuffle last)
    image = synthetic_image(70, 90, 3, seed=1)
    whole = upscale(image, torch_model(module), Geometry(scale=4, tile=96, margin=0))
    exact = upscale(image, torch_model(module), Geometry(scale=4, tile=16, margin=reach))
    # the FP32 gate's tolerance: a pixel may differ by one level (operator order per shape)
    assert np.abs(exact.astype(int) - whole).max() <= 1
    short = upscale(image, torch_model(module), Geometry(scale=4, tile=16, margin=reach - 4))
    assert np.abs(short.astype(int) - whole).max() > 1  # a margin below the field shows seams


def test_the_trained_preset_architecture_is_probed_as_phase_one_measured() -> None:
    config = ModelConfig(arch=Arch.srgan, image_size=32, scale=4, width=32, blocks=4)
    module = build_generator(config).eval()
    assert probe_size(module, 1, "srgan") == (4, 1, 1, 1)
    assert measure_reach(module, 1, 4, 1) == 11
