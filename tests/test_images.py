"""Image grids: written in the format the file name asks for, or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gendeploy.errors import UsageError
from gendeploy.images import save_grid

IMAGES = np.random.default_rng(0).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("grid.png", "PNG"), ("grid.jpg", "JPEG"), ("grid.JPEG", "JPEG"), ("grid.bmp", "BMP")],
)
def test_a_grid_is_written_in_the_format_its_suffix_names(
    name: str, fmt: str, tmp_path: Path
) -> None:
    path = save_grid(IMAGES, tmp_path / name, nrow=2)
    with Image.open(path) as picture:
        assert picture.format == fmt and picture.mode == "RGB"


def test_grey_images_are_written_as_jpeg_too(tmp_path: Path) -> None:
    with Image.open(save_grid(IMAGES[:, :1], tmp_path / "grey.jpg")) as picture:
        assert picture.format == "JPEG" and picture.mode == "L"


@pytest.mark.parametrize("name", ["grid.xyz", "grid", "grid.onnx"])
def test_a_suffix_that_names_no_writable_format_is_refused_and_nothing_written(
    name: str, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match=r"names no image format Pillow can write; use \.png"):
        save_grid(IMAGES, tmp_path / name)
    assert list(tmp_path.iterdir()) == []
