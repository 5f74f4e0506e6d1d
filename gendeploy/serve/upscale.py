"""``gendeploy upscale``: send an image file to a served image-to-image model, write the result.

The file goes as it is (``image_bytes``: the server decodes PNG or JPEG) or, with ``send=pixels``,
decoded here and sent as ``image`` (UINT8 [1, H, W, C]); the server tiles it, so any size up to
its megapixel limit runs. The result is written atomically: nothing at ``out`` unless it is whole.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from gendeploy.errors import ServeError, UsageError
from gendeploy.fileio import atomic_write
from gendeploy.runtime.triton import TritonRunner
from gendeploy.serve.client import served_config

IMAGE_INPUT, IMAGE_BYTES_INPUT, IMAGE_OUTPUT = "image", "image_bytes", "images"  # repo's
WRITABLE = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class Send(str, Enum):
    bytes = "bytes"  # the file as it is: the server decodes it
    pixels = "pixels"  # decoded here: UINT8 HWC


@dataclass(frozen=True)
class Upscaled:
    model: str
    scale: int
    size_in: tuple[int, int]  # width, height
    size_out: tuple[int, int]


def upscale_file(
    source: Path,
    out: Path,
    url: str,
    model: str | None = None,
    protocol: str = "http",
    send: Send = Send.bytes,
    served_models: list[str] | None = None,
    timeout_s: float = 600.0,
) -> Upscaled:
    """``source`` through the served model ``model`` (default: the only one), written to ``out``
    (its suffix picks the format)."""
    fmt = WRITABLE.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {out}: write .png, .jpg or .webp")
    try:
        data = source.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {source}: {e.strerror or e}") from None
    name, _config, params = served_config(url, model, protocol, served_models)
    if "scale" not in params:
        raise UsageError(f"model {name!r} is a generator, not image-to-image: use `generate`")
    channels = int(params["in_channels"])
    if send is Send.pixels:
        feeds = {IMAGE_INPUT: _decode(source, data, channels)[None]}
    else:
        feeds = {IMAGE_BYTES_INPUT: np.array([[data]], dtype=np.object_)}
    with TritonRunner(url, name, protocol, output=IMAGE_OUTPUT, timeout_s=timeout_s) as runner:
        result = runner.run(feeds)
    if result.ndim != 4 or result.dtype != np.uint8:
        raise ServeError(f"model {name!r} returned {result.dtype}{list(result.shape)}, not images")
    image = result[0]
    _write(out, image, fmt)
    scale = int(params["scale"])
    h, w = image.shape[:2]
    return Upscaled(name, scale, (w // scale, h // scale), (w, h))


def _decode(source: Path, data: bytes, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if channels not in MODES:
        raise UsageError(f"the model takes {channels} channels: send the file as --send bytes")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            pixels = np.asarray(opened.convert(MODES[channels]))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UsageError(f"{source} is not an image Pillow can read ({e})") from None
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def _write(out: Path, image: np.ndarray, fmt: str) -> None:
    from PIL import Image

    pixels = image[..., 0] if image.shape[-1] == 1 else image
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    if fmt == "JPEG" and picture.mode == "RGBA":
        picture = picture.convert("RGB")
    atomic_write(out, lambda f: picture.save(f, format=fmt))
